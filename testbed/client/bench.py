"""A load run end to end: run a scenario on a target, summarise, judge the tail, write the files.

:func:`load_bench` runs one :class:`~testbed.client.loadgen.LoadSpec` and returns (and, with
``out_dir``, writes atomically) ``records.jsonl``, ``summary.json`` (the summary's vLLM-style
unit-suffixed keys, rejections, dispatch delay, MLPerf early-stopping validity of the p99 claims,
goodput, the signature), ``summary.md`` and ``latency_cdf.png``.  :func:`find_peak` searches the
highest Poisson rate whose run meets the SLO (doubling, then bisecting) and keeps every trial.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from testbed.client.loadgen import LoadSpec, run
from testbed.client.targets import Target, is_rejection
from testbed.datasets import Example
from testbed.errors import TestbedError
from testbed.io import write_json_atomic, write_text_atomic
from testbed.metrics import summary as S
from testbed.metrics.records import RequestRecord
from testbed.metrics.saturation import ClientLimits, run_verdict, verdict_text
from testbed.metrics.visible import visible_stats
from testbed.report.text import fmt_ms, kv_table, latency_table
from testbed.signature import signature

TargetFactory = Callable[[], Target]


def tail_claims(records: Sequence[RequestRecord], slo: S.SLO) -> dict[str, Any]:
    """p99 claims (MLPerf early stopping, confidence 0.99) for each SLO bound that is set.

    A failed or rejected request counts as over the bound (``inf``) for TTFT and E2E.
    """
    live = [r for r in records if not r.warmup]
    out: dict[str, Any] = {}
    for name, fn, bound in (("ttft", S.ttft_ms, slo.ttft_ms), ("tpot", S.tpot_ms, slo.tpot_ms),
                            ("e2e", S.e2e_ms, slo.e2e_ms)):
        if bound is None:
            continue
        if name == "tpot":
            vals = [fn(r) for r in live if S.is_completed(r)]
        else:
            vals = [fn(r) if S.is_completed(r) else math.inf for r in live]
        out[f"p99_{name}"] = S.tail_claim(vals, bound, 0.99)
    return out


def meets_slo(records: Sequence[RequestRecord], slo: S.SLO) -> tuple[bool, str]:
    """The peak search's pass rule: no failed or rejected request, and p99 of each bound within it."""
    summ = S.summarize(records, slo)
    if summ.failed:
        return False, f"{summ.failed} failed or rejected"
    if not summ.completed:
        return False, "nothing completed"
    for key, bound in (("p99_ttft_ms", slo.ttft_ms), ("p99_tpot_ms", slo.tpot_ms), ("p99_e2el_ms", slo.e2e_ms)):
        v = getattr(summ, key)
        if bound is not None and v is not None and v > bound:
            return False, f"{key} {v:.1f} > {bound:g}"
    return True, "meets the SLO"


def _progress_bar(total: int | None, desc: str, enabled: bool) -> tuple[Any, Callable[[int], None]]:
    if not enabled:
        return None, lambda n: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="req", file=sys.stderr, leave=False)
    return bar, lambda n: bar.update(n - bar.n)


def run_records(make_target: TargetFactory, examples: Sequence[Example], spec: LoadSpec, progress: bool = True
                ) -> list[RequestRecord]:
    target = make_target()
    total = spec.num_requests or (None if spec.duration_s else len(examples))
    bar, tick = _progress_bar(total, f"{spec.scenario} {target.label}", progress)
    try:
        return run(target, examples, spec, tick)
    finally:
        if bar is not None:
            bar.close()


def report(records: list[RequestRecord], spec: LoadSpec, slo: S.SLO, describe: dict[str, Any],
           examples: Sequence[Example], out_dir: Path | None, title: str, extra_head: dict[str, Any] | None = None,
           limits: ClientLimits | None = None) -> dict[str, Any]:
    """Summary, tail claims, accuracy, Markdown, and the files in ``out_dir``.

    The summary also holds E2E to the last visible token (:mod:`testbed.metrics.visible`) and
    the client verdict (:mod:`testbed.metrics.saturation`: ``client_limited``, loop lag, client
    CPU per request) against ``limits``.
    """
    summ = S.summarize(records, slo, scenario=spec.scenario).to_dict()
    summ.update(visible_stats(records))
    verdict = run_verdict(records, spec.scenario, limits)
    summ.update(verdict)
    live = [r for r in records if not r.warmup]
    rejected = sum(1 for r in live if not r.ok and is_rejection(r.error))
    summ["rejected"] = rejected
    claims = tail_claims(records, slo) if not slo.is_empty else {}
    acc = None
    refs = [examples[i % len(examples)].reference for i in range(len(live))]
    if live and all(r is not None for r in refs) and any(r.ok for r in live):
        from testbed.metrics.accuracy import score

        acc = score([r.output or "" if r.ok else "" for r in live], [str(r) for r in refs])
    sig = signature(**describe, **spec.describe(), **slo.to_dict(), decoding="greedy")
    result: dict[str, Any] = {"signature": sig, "summary": summ, "tail_claims": claims, "accuracy": acc,
                              "percentile_method": S.PERCENTILE_METHOD}
    head: dict[str, Any] = {"target": describe.get("target"), "scenario": spec.scenario}
    if spec.rate:
        head["rate (req/s, Poisson)"] = f"{spec.rate:g} (seed {spec.seed})"
    if spec.scenario == "concurrency":
        head["concurrency"] = spec.concurrency
    head.update(extra_head or {})
    head["requests"] = (f"{len(live)} ({summ['warmup_excluded']} warm-up excluded)")
    head["completed / failed (rejected)"] = f"{summ['completed']} / {summ['failed']} ({rejected})"
    if summ["errors"]:
        head["errors"] = ", ".join(f"{k}: {v}" for k, v in summ["errors"].items())
    head["duration (s)"] = fmt_ms(summ["duration_s"], 2)
    head["request throughput (req/s)"] = fmt_ms(summ["request_throughput"], 2)
    head["output tokens/s"] = fmt_ms(summ["output_throughput"], 1)
    head["dispatch delay p50 / p99 / max (ms)"] = (f"{fmt_ms(summ['median_dispatch_delay_ms'], 3)} / "
                                                   f"{fmt_ms(summ['p99_dispatch_delay_ms'], 3)} / "
                                                   f"{fmt_ms(summ['max_dispatch_delay_ms'], 3)}")
    head["event-loop lag p50 / p99 / max (ms)"] = (f"{fmt_ms(summ['median_loop_lag_ms'], 3)} / "
                                                   f"{fmt_ms(summ['p99_loop_lag_ms'], 3)} / "
                                                   f"{fmt_ms(summ['max_loop_lag_ms'], 3)}")
    head["client"] = (f"{verdict_text(verdict)}; {fmt_ms(summ['client_cpu_ms_per_request'], 3)} ms CPU per request, "
                      f"{summ['client_procs']} process(es)")
    head["E2E to the last visible token p50 / p99 (ms)"] = (f"{fmt_ms(summ['median_e2el_visible_ms'], 2)} / "
                                                            f"{fmt_ms(summ['p99_e2el_visible_ms'], 2)}")
    if not slo.is_empty:
        head["goodput (req/s) / SLO attainment"] = (f"{fmt_ms(summ['request_goodput'], 2)} / "
                                                    f"{fmt_ms(summ['slo_attainment_pct'], 1)} %")
        for k, c in claims.items():
            head[f"{k} <= {c['bound_ms']:g} ms"] = ("PASS" if c["passed"] else "not shown") + f": {c['reason']}"
    if acc:
        note = " (failed and rejected requests scored as empty output)" if summ["failed"] else ""
        head["BLEU / chrF"] = f"{acc['bleu']:.2f} / {acc['chrf']:.2f}{note}"
    md = (f"## {title}\n\n{kv_table(head)}\n\n{latency_table(records)}\n\n"
          f"Percentiles: {S.PERCENTILE_METHOD}. Latency from the scheduled send time s_i: TTFT = first token - s_i; "
          "TPOT = (last - first)/(N-1), N>=2 (N: tokens in timed chunks); E2E = last token chunk - s_i (testbed's "
          "server streams EOS as its own event: E2E ends there, the visible-token E2E at the last text); failed and "
          "rejected requests are counted, never timed.")
    if out_dir is not None:
        write_text_atomic(out_dir / "records.jsonl", "".join(r.to_json() + "\n" for r in records))
        from testbed.report.plots import latency_cdf

        plot = latency_cdf(records, out_dir / "latency_cdf.png", title=title)
        result["plot"] = str(plot) if plot else None
        write_json_atomic(out_dir / "summary.json", result)
        write_text_atomic(out_dir / "summary.md", md + "\n")
        if plot:
            md += f"\n\nLatency CDF: {plot}"
    result["markdown"] = md
    result["records"] = records
    return result


def load_bench(make_target: TargetFactory, examples: Sequence[Example], spec: LoadSpec, slo: S.SLO,
               describe: dict[str, Any], out_dir: Path | None = None, progress: bool = True,
               limits: ClientLimits | None = None) -> dict[str, Any]:
    records = run_records(make_target, examples, spec, progress)
    title = f"{spec.scenario.capitalize()}, {describe.get('target')}"
    return report(records, spec, slo, describe, examples, out_dir, title, limits=limits)


def find_peak(make_target: TargetFactory, examples: Sequence[Example], spec: LoadSpec, slo: S.SLO,
              describe: dict[str, Any], out_dir: Path | None = None, progress: bool = True,
              start_rate: float | None = None, max_trials: int = 10, bisect_steps: int = 4) -> dict[str, Any]:
    """Highest Poisson rate (req/s) whose run meets ``slo`` (:func:`meets_slo`).

    Starts at ``start_rate`` (default: half the rate one request at a time sustains, measured by
    the warm-up), doubles while runs pass, then bisects ``bisect_steps`` times between the last
    passing and the first failing rate.  ``spec`` gives the size, warm-up and seed (each trial
    is ``spec`` with scenario ``server`` at its rate), the same for every trial; the peak run's
    files go to ``out_dir`` and every trial's summary to ``find_peak.json``.
    """
    if slo.is_empty:
        raise TestbedError("--find-peak needs an SLO: give --slo ttft=..,tpot=..,e2e=.. (milliseconds)")
    if start_rate is None:
        probe = run_records(make_target, examples, replace(spec, scenario="singlestream", num_requests=20,
                                                           duration_s=None), progress)
        e2e = S.summarize(probe).median_e2el_ms
        if e2e is None:
            raise TestbedError("--find-peak: the probe requests all failed; is the target up?")
        start_rate = max(0.1, 0.5 * 1000.0 / e2e)
    trials: list[dict[str, Any]] = []
    best: tuple[float, list[RequestRecord]] | None = None

    def trial(rate: float) -> bool:
        nonlocal best
        recs = run_records(make_target, examples, replace(spec, scenario="server", rate=rate), progress)
        ok, why = meets_slo(recs, slo)
        summ = S.summarize(recs, slo)
        trials.append({"rate": rate, "passed": ok, "why": why, "completed": summ.completed, "failed": summ.failed,
                       "request_throughput": summ.request_throughput, "p99_ttft_ms": summ.p99_ttft_ms,
                       "p99_tpot_ms": summ.p99_tpot_ms, "p99_e2el_ms": summ.p99_e2el_ms,
                       "p99_dispatch_delay_ms": summ.p99_dispatch_delay_ms})
        print(f"find-peak: {rate:.4g} req/s -> {'pass' if ok else 'fail'} ({why})", file=sys.stderr)
        if ok and (best is None or rate > best[0]):
            best = (rate, recs)
        return ok

    lo, hi = 0.0, math.inf
    rate = start_rate
    while len(trials) < max_trials:  # bracket: double while passing, halve while failing
        if trial(rate):
            lo = rate
            if not math.isinf(hi):
                break
            rate *= 2
        else:
            hi = rate
            if lo > 0:
                break
            rate /= 2
    for _ in range(bisect_steps):
        if lo == 0.0 or math.isinf(hi) or hi / lo < 1.05:
            break
        mid = (lo + hi) / 2
        if trial(mid):
            lo = mid
        else:
            hi = mid
    lines = ["| rate (req/s) | result | completed | failed | p99 TTFT ms | p99 TPOT ms | p99 E2E ms "
             "| p99 dispatch ms |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for t in trials:
        lines.append(f"| {t['rate']:.3g} | {'pass' if t['passed'] else 'fail: ' + t['why']} | {t['completed']} | "
                     f"{t['failed']} | {fmt_ms(t['p99_ttft_ms'])} | {fmt_ms(t['p99_tpot_ms'], 2)} | "
                     f"{fmt_ms(t['p99_e2el_ms'])} | {fmt_ms(t['p99_dispatch_delay_ms'], 3)} |")
    peak = best[0] if best else None
    md_trials = "\n".join(lines)
    if best is not None:
        res = report(best[1], replace(spec, scenario="server", rate=best[0]), slo, describe, examples, out_dir,
                     f"Server at the peak rate {best[0]:.3g} req/s, {describe.get('target')}")
    else:
        res = {"markdown": "no rate met the SLO", "records": []}
    res["peak_rate"] = peak
    res["trials"] = trials
    res["markdown"] = (f"## Peak Poisson rate meeting the SLO: {fmt_ms(peak, 3)} req/s\n\n{md_trials}\n\n"
                       + res["markdown"])
    if out_dir is not None:
        write_json_atomic(out_dir / "find_peak.json", {"peak_rate": peak, "trials": trials, "slo": slo.to_dict(),
                                                       "signature": signature(**describe, **spec.describe())})
    return res
