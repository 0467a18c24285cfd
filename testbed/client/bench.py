"""A load run end to end: run a scenario on a target, summarise, judge the tail, write the files.

:func:`load_bench` runs one :class:`~testbed.client.loadgen.LoadSpec` and returns (and, with
``out_dir``, writes atomically) ``records.jsonl``, ``summary.json`` (the summary's vLLM-style
unit-suffixed keys, rejections, dispatch delay, the MLPerf early-stopping tail claims for each
SLO bound and the rule used, goodput, BLEU / chrF, the signature), ``summary.md`` and
``latency_cdf.png``.  The peak search (``--find-peak``) lives in :mod:`testbed.client.peak`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from testbed.client.loadgen import LoadSpec, run
from testbed.client.targets import Target, is_rejection
from testbed.datasets import Example
from testbed.errors import TestbedError
from testbed.io import write_json_atomic, write_text_atomic
from testbed.metrics import summary as S
from testbed.metrics.early_stopping import ESTIMATE_RULE, RULES, SERVER_RULE
from testbed.metrics.records import RequestRecord
from testbed.metrics.saturation import ClientLimits, run_verdict, verdict_text
from testbed.metrics.visible import visible_stats
from testbed.report.text import fmt_ms, kv_table, latency_table
from testbed.signature import signature

TargetFactory = Callable[[], Target]


def claim_rule(scenario: str) -> tuple[str, float]:
    """(early-stopping rule, percentile) of the tail claims of a ``scenario``, as MLPerf LoadGen does.

    ``server``: the Server rule at p99; ``singlestream``: the percentile-estimate rule at p90
    (MLPerf's SingleStream percentile); ``offline`` / ``concurrency`` (no MLPerf latency claim):
    the percentile-estimate rule at p99.
    """
    if scenario == "server":
        return SERVER_RULE, 0.99
    return ESTIMATE_RULE, 0.90 if scenario == "singlestream" else 0.99


def tail_claims(records: Sequence[RequestRecord], slo: S.SLO, rule: str = ESTIMATE_RULE,
                percentile: float = 0.99) -> dict[str, Any]:
    """MLPerf early-stopping claims (confidence 0.99, ``rule``) for each SLO bound that is set.

    Keys ``p<P>_ttft`` / ``p<P>_tpot`` / ``p<P>_e2e``.  A failed or rejected request counts as
    over the bound (``inf``) for every bound; a completed one without a TPOT (one token) is no
    TPOT sample.
    """
    live = [r for r in records if not r.warmup]
    out: dict[str, Any] = {}
    pname = f"p{percentile * 100:g}"
    for name, fn, bound in (("ttft", S.ttft_ms, slo.ttft_ms), ("tpot", S.tpot_ms, slo.tpot_ms),
                            ("e2e", S.e2e_ms, slo.e2e_ms)):
        if bound is None:
            continue
        vals = [fn(r) if S.is_completed(r) else math.inf for r in live]
        out[f"{pname}_{name}"] = S.tail_claim(vals, bound, percentile, rule=rule)
    return out


def request_index(rec: RequestRecord) -> int:
    """The index k of a load-generator request, from its id ``"k:<example id>"`` (``"wk:..."`` for warm-up).

    Request k was sent ``examples[k % len(examples)]`` (:func:`testbed.client.loadgen.run_load`);
    records come back in completion order in the concurrency scenario, so outputs are paired with
    references through k, never through their position.
    """
    head = rec.request_id.partition(":")[0].removeprefix("w")
    if not head.isdigit():
        raise TestbedError(f"request id {rec.request_id!r}: expected '<index>:<example id>' from the load generator")
    return int(head)


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


def run_records(make_target: TargetFactory, examples: Sequence[Example], spec: LoadSpec, progress: bool = True,
                stats: dict[str, Any] | None = None) -> list[RequestRecord]:
    """Run the load; ``stats`` receives the target's own counters afterwards (the in-process
    scheduler's batching, joins and padding), when it has them."""
    target = make_target()
    total = spec.num_requests or (None if spec.duration_s else len(examples))
    bar, tick = _progress_bar(total, f"{spec.scenario} {target.label}", progress)
    try:
        return run(target, examples, spec, tick)
    finally:
        if bar is not None:
            bar.close()
        if stats is not None and hasattr(target, "stats"):
            stats.update(target.stats())


def report(records: list[RequestRecord], spec: LoadSpec, slo: S.SLO, describe: dict[str, Any],
           examples: Sequence[Example], out_dir: Path | None, title: str, extra_head: dict[str, Any] | None = None,
           limits: ClientLimits | None = None, server_stats: dict[str, Any] | None = None) -> dict[str, Any]:
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
    if server_stats:
        summ["server"] = server_stats
    rule, pct = claim_rule(spec.scenario)
    claims = tail_claims(records, slo, rule, pct) if not slo.is_empty else {}
    acc = None
    # pair by request index, not by position: closed-loop users append records in completion order
    refs = [examples[request_index(r) % len(examples)].reference for r in live]
    if live and all(r is not None for r in refs) and any(r.ok for r in live):
        from testbed.metrics.accuracy import score

        acc = score([r.output or "" if r.ok else "" for r in live], [str(r) for r in refs])
    sig = signature(**describe, **spec.describe(), **slo.to_dict(), decoding="greedy")
    result: dict[str, Any] = {"signature": sig, "summary": summ, "tail_claims": claims,
                              "tail_claim_rule": RULES[rule] if claims else None, "accuracy": acc,
                              "percentile_method": S.PERCENTILE_METHOD}
    head: dict[str, Any] = {"target": describe.get("target"), "scenario": spec.scenario}
    if spec.rate:
        head["rate (req/s, Poisson)"] = f"{spec.rate:g} (seed {spec.seed})"
    if spec.scenario == "concurrency":
        head["concurrency"] = spec.concurrency
    head.update(extra_head or {})
    if server_stats:
        pad = server_stats.get("padded_fraction")
        head["batching (engine decoding)"] = (
            f"{server_stats['batching']} ({server_stats['batch_decoding']}): {server_stats['batches']} batches, "
            f"{server_stats['joins']} joins, padding {'-' if pad is None else f'{100 * pad:.1f} %'} of positions")
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
        head["tail claims"] = f"{RULES[rule]}, confidence 0.99"
        for k, c in claims.items():
            head[f"{k} <= {c['bound_ms']:g} ms"] = ("valid" if c["passed"] else "not valid") + f": {c['reason']}"
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
    stats: dict[str, Any] = {}
    records = run_records(make_target, examples, spec, progress, stats)
    title = f"{spec.scenario.capitalize()}, {describe.get('target')}"
    return report(records, spec, slo, describe, examples, out_dir, title, limits=limits, server_stats=stats)
