"""``--find-peak``: the highest Poisson rate whose trial meets the SLO with a valid MLPerf tail claim.

**Trials.**  A trial is the server scenario at one nominal rate ``r``, sized by duration with a
minimum length: ``n = max(min_queries, ceil(r * trial_s))`` Poisson arrivals (same seed for
every trial).  ``min_queries`` defaults to the Server rule's fewest queries, ``h(0)`` (459 for
p99), so a trial with no request over the bound can carry a valid claim.

**Verdict of a trial** (:func:`judge_trial`, pure):

* *passed*: no failed or rejected request, ``achieved >= 0.95 x offered`` and the p99 of each
  SLO bound within it.  ``offered = (n - 1) / (s_n - s_1)``, the rate the seeded schedule
  actually offered (a Poisson draw of 459 arrivals lies within about +-5 % of ``r``, so comparing
  with ``r`` itself would fail trials by chance; both are reported); ``achieved = completed / T``
  with ``T = max(e_i) - min(s_i)`` (METRICS.md's request throughput);
* *claim valid*: for each SLO bound, MLPerf LoadGen's early stopping, **Server rule**, at p99
  and confidence 0.99: ``n >= h(t) + t`` with ``t`` of the ``n`` issued requests over the bound
  (a failed one counts as over; :func:`testbed.metrics.early_stopping.server_early_stopping`);
* *ok* = passed and claim valid.

**Search** (:func:`search_rates`, pure): from ``start_rate``, double while trials are ok, halve
while not, then bisect ``bisect_steps`` times between the highest ok and the lowest not-ok rate.
A trial too short for any claim (``n < h(0)``, only when ``min_queries`` was lowered) cannot be
ok; the search then follows *passed* alone, so short trials still locate the rate, and no peak
from them is valid.

**Peak**: the highest rate whose trial is ok.  Otherwise there is no valid peak, and the
highest trial that passed with a claim that is not valid is reported as such, never as the peak.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from testbed.client.bench import TargetFactory, meets_slo, report, run_records, tail_claims
from testbed.client.loadgen import LoadSpec
from testbed.datasets import Example
from testbed.errors import ConfigError, TestbedError
from testbed.io import write_json_atomic
from testbed.metrics import summary as S
from testbed.metrics.early_stopping import RULES, SERVER_RULE, server_min_queries
from testbed.metrics.records import RequestRecord
from testbed.report.text import fmt_ms
from testbed.signature import signature

log = logging.getLogger(__name__)

#: The percentile of every find-peak claim (MLPerf Server: p99).
PEAK_PERCENTILE = 0.99
TrialRunner = Callable[[LoadSpec], list[RequestRecord]]


@dataclass(frozen=True)
class PeakSearch:
    """How ``--find-peak`` searches: trial length, minimum size, number of trials, pass ratio.

    ``start_rate`` None: half the rate one request at a time sustains (a 20-request probe).
    ``min_queries`` None: :func:`~testbed.metrics.early_stopping.server_min_queries` at p99 (459).
    """

    start_rate: float | None = None
    trial_s: float = 30.0
    min_queries: int | None = None
    max_trials: int = 8
    bisect_steps: int = 4
    min_achieved_ratio: float = 0.95

    def __post_init__(self) -> None:
        if self.start_rate is not None and not (math.isfinite(self.start_rate) and 0 < self.start_rate <= 1e6):
            raise ConfigError("start_rate", self.start_rate, "a rate in (0, 1e6] requests per second", "--rate")
        if not (math.isfinite(self.trial_s) and self.trial_s > 0):
            raise ConfigError("trial_s", self.trial_s, "a positive number of seconds", "--duration")
        if self.min_queries is not None and (not isinstance(self.min_queries, int) or self.min_queries < 2):
            raise ConfigError("min_queries", self.min_queries, "an integer >= 2", "--peak-min-queries")
        if not isinstance(self.max_trials, int) or self.max_trials < 1:
            raise ConfigError("max_trials", self.max_trials, "a positive integer", "--peak-trials")
        if not isinstance(self.bisect_steps, int) or self.bisect_steps < 0:
            raise ConfigError("bisect_steps", self.bisect_steps, "a non-negative integer", "--peak-steps")
        if not 0 < self.min_achieved_ratio <= 1:
            raise ConfigError("min_achieved_ratio", self.min_achieved_ratio, "a fraction in (0, 1]")

    @property
    def claim_min_queries(self) -> int:
        """The fewest issued requests for any valid claim (Server rule, p99): 459."""
        return server_min_queries(PEAK_PERCENTILE)

    @property
    def floor(self) -> int:
        """The minimum trial length in requests."""
        return self.min_queries if self.min_queries is not None else self.claim_min_queries

    def queries(self, rate: float) -> int:
        """Requests in the trial at ``rate``: ``max(floor, ceil(rate * trial_s))``."""
        return max(self.floor, math.ceil(rate * self.trial_s))


def _rates(live: Sequence[RequestRecord], completed: int, duration_s: float | None) -> tuple[float | None, ...]:
    """(schedule span s, offered (n-1)/s, achieved completed/T) -- None where undefined."""
    sched = sorted(r.schedule_ns for r in live)
    span = (sched[-1] - sched[0]) / 1e9 if len(sched) >= 2 else None
    offered = (len(sched) - 1) / span if span else None
    achieved = completed / duration_s if duration_s else None
    return span, offered, achieved


def judge_trial(records: Sequence[RequestRecord], rate: float, slo: S.SLO, search: PeakSearch) -> dict[str, Any]:
    """One trial's row: sizes, rates, p99s, ``passed`` / ``why``, the claims, ``claim_valid``, ``ok``.

    Pure (see the module docstring for every rule).  ``search_ok`` is what the search follows:
    ``ok``, or ``passed`` alone when the trial is too short for any claim.
    """
    live = [r for r in records if not r.warmup]
    summ = S.summarize(records, slo, scenario="server")
    span, offered, achieved = _rates(live, summ.completed, summ.duration_s)
    ratio = achieved / offered if achieved is not None and offered else None
    passed, why = meets_slo(records, slo)
    if passed and (ratio is None or ratio < search.min_achieved_ratio):
        passed = False
        why = (f"achieved {fmt_ms(achieved, 2)} < {search.min_achieved_ratio:g} x offered {fmt_ms(offered, 2)} req/s"
               if ratio is not None else "achieved / offered rate undefined")
    claims = tail_claims(records, slo, SERVER_RULE, PEAK_PERCENTILE)
    invalid = [f"{k}: {c['reason']}" for k, c in claims.items() if not c["passed"]]
    claim_valid = bool(claims) and not invalid
    short = len(live) < search.claim_min_queries
    return {
        "rate": rate, "queries": len(live), "duration_s": summ.duration_s, "schedule_s": span,
        "offered_rate": offered, "achieved_rate": achieved, "achieved_ratio": ratio,
        "completed": summ.completed, "failed": summ.failed,
        "p99_ttft_ms": summ.p99_ttft_ms, "p99_tpot_ms": summ.p99_tpot_ms, "p99_e2el_ms": summ.p99_e2el_ms,
        "p99_dispatch_delay_ms": summ.p99_dispatch_delay_ms,
        "passed": passed, "why": why,
        "claims": {k: {f: c[f] for f in ("rule", "n", "n_over", "required_queries", "passed", "reason")}
                   for k, c in claims.items()},
        "claim_valid": claim_valid, "claim_why": "; ".join(invalid) if invalid else "valid",
        "ok": passed and claim_valid,
        "search_ok": passed and (claim_valid or short),
    }


def search_rates(trial: Callable[[float], dict[str, Any]], start_rate: float, max_trials: int,
                 bisect_steps: int) -> list[dict[str, Any]]:
    """Bracket then bisect on ``trial(rate)["search_ok"]``; returns every trial in the order run.

    Bracket: double while ok, halve while not, until both an ok and a not-ok rate are known or
    ``max_trials`` ran.  Then ``bisect_steps`` midpoints (stopping early once the bracket is
    within 5 %).
    """
    trials: list[dict[str, Any]] = []
    lo, hi = 0.0, math.inf
    rate = start_rate
    while len(trials) < max_trials:
        trials.append(trial(rate))
        if trials[-1]["search_ok"]:
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
        trials.append(trial(mid))
        if trials[-1]["search_ok"]:
            lo = mid
        else:
            hi = mid
    return trials


def pick_peak(trials: Sequence[dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the peak: highest ``ok`` trial, the best invalid: highest trial above it that passed without a valid claim)."""
    ok = [t for t in trials if t["ok"]]
    peak = max(ok, key=lambda t: t["rate"]) if ok else None
    floor = peak["rate"] if peak else -math.inf
    invalid = [t for t in trials if t["passed"] and not t["claim_valid"] and t["rate"] > floor]
    return peak, (max(invalid, key=lambda t: t["rate"]) if invalid else None)


def _bounds(slo: S.SLO) -> str:
    parts = [f"{k} <= {v:g} ms" for k, v in (("TTFT", slo.ttft_ms), ("TPOT", slo.tpot_ms), ("E2E", slo.e2e_ms))
             if v is not None]
    return ", ".join(parts)


def _claim_cell(claims: dict[str, dict[str, Any]]) -> str:
    """Compact table cell: each claim that is not valid, with its counts and the run length it needs."""
    return "; ".join(f"{k} {c['n_over']}/{c['n']} over, needs {c['required_queries']}"
                     for k, c in claims.items() if not c["passed"]) or "no SLO bound"


def render(trials: Sequence[dict[str, Any]], peak: dict[str, Any] | None, best_invalid: dict[str, Any] | None,
           slo: S.SLO, search: PeakSearch, seed: int) -> str:
    """The find-peak summary: verdict line, the rules, one row per trial."""
    if peak is not None:
        title = f"## Peak Poisson rate: {peak['rate']:.4g} req/s (meets the SLO with a valid p99 claim)"
    else:
        title = "## No valid peak: no trial met the SLO with a valid p99 claim"
    notes = []
    if best_invalid is not None:
        notes.append(f"Best invalid trial (**not** a peak): {best_invalid['rate']:.4g} req/s passed the SLO, but its "
                     f"tail claim is not valid ({best_invalid['claim_why']}).")
    notes += [
        f"Tail claim: {RULES[SERVER_RULE]}, at p99 and confidence 0.99, for each bound ({_bounds(slo)}); a failed "
        f"request counts as over. The fewest requests for a valid claim: {search.claim_min_queries}.",
        f"Pass: no failed or rejected request, achieved >= {search.min_achieved_ratio:g} x offered, the p99 of each "
        "bound within it. Offered = (n - 1) / (s_n - s_1) of the Poisson schedule (nominal rate in the first "
        "column); achieved = completed / (max e_i - min s_i). Peak = the highest rate that passed with a valid claim.",
        f"Trials: max({search.floor}, ceil(rate x {search.trial_s:g} s)) Poisson arrivals, seed {seed}.",
    ]
    lines = ["| rate (req/s) | requests | duration (s) | offered (req/s) | achieved (req/s) | achieved / offered "
             "| failed | p99 TTFT ms | p99 TPOT ms | p99 E2E ms | p99 dispatch ms | result | tail claim |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for t in trials:
        claim = "valid" if t["claim_valid"] else "not valid: " + _claim_cell(t["claims"])
        lines.append(
            f"| {t['rate']:.4g} | {t['queries']} | {fmt_ms(t['duration_s'], 1)} | {fmt_ms(t['offered_rate'], 3)} | "
            f"{fmt_ms(t['achieved_rate'], 3)} | {fmt_ms(t['achieved_ratio'], 3)} | {t['failed']} | "
            f"{fmt_ms(t['p99_ttft_ms'])} | {fmt_ms(t['p99_tpot_ms'], 2)} | {fmt_ms(t['p99_e2el_ms'])} | "
            f"{fmt_ms(t['p99_dispatch_delay_ms'], 3)} | {'pass' if t['passed'] else 'fail: ' + t['why']} | {claim} |")
    return "\n\n".join([title, *notes, "\n".join(lines)])


def find_peak(make_target: TargetFactory, examples: Sequence[Example], spec: LoadSpec, slo: S.SLO,
              describe: dict[str, Any], out_dir: Path | None = None, progress: bool = True,
              search: PeakSearch | None = None, run_trial: TrialRunner | None = None,
              on_trial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Search the peak (module docstring); returns the peak run's :func:`report` plus the search.

    ``spec`` gives the warm-up and seed (each trial is ``spec`` with scenario ``server``, its
    rate and its size).  ``run_trial`` runs one spec and returns its records (default: a fresh
    target from ``make_target`` per trial); ``on_trial`` sees each trial's row as it finishes.
    Keys added: ``peak_rate`` (None without a valid peak), ``best_invalid_rate``, ``trials``,
    ``rule``.  ``out_dir`` gets the peak run's files (else the best invalid one's, labelled) and
    ``find_peak.json``.
    """
    search = search or PeakSearch()
    if slo.is_empty:
        raise TestbedError("--find-peak needs an SLO: give --slo ttft=..,tpot=..,e2e=.. (milliseconds)")
    runner = run_trial or (lambda s: run_records(make_target, examples, s, progress))
    start = search.start_rate
    if start is None:
        probe = runner(replace(spec, scenario="singlestream", num_requests=20, duration_s=None))
        e2e = S.summarize(probe).median_e2el_ms
        if e2e is None:
            raise TestbedError("--find-peak: the probe requests all failed; is the target up?")
        start = max(0.1, 0.5 * 1000.0 / e2e)
    records: dict[float, list[RequestRecord]] = {}

    def trial(rate: float) -> dict[str, Any]:
        recs = runner(replace(spec, scenario="server", rate=rate, num_requests=search.queries(rate), duration_s=None))
        row = judge_trial(recs, rate, slo, search)
        records[rate] = recs
        log.info("find-peak: %.4g req/s, %d requests -> %s; claim %s", rate, row["queries"],
                 "pass" if row["passed"] else "fail (" + row["why"] + ")", row["claim_why"])
        if on_trial is not None:
            on_trial(row)
        return row

    trials = search_rates(trial, start, search.max_trials, search.bisect_steps)
    peak, best_invalid = pick_peak(trials)
    md = render(trials, peak, best_invalid, slo, search, spec.seed)
    shown = peak or best_invalid
    if shown is not None:
        label = ("the peak rate" if shown is peak
                 else "the best trial; its tail claim is NOT valid, so this is not a peak")
        res = report(records[shown["rate"]], replace(spec, scenario="server", rate=shown["rate"],
                                                      num_requests=shown["queries"], duration_s=None),
                     slo, describe, examples, out_dir,
                     f"Server at {shown['rate']:.4g} req/s, {label}: {describe.get('target')}")
    else:
        res = {"markdown": "No trial passed the SLO.", "records": []}
    res.update(peak_rate=peak["rate"] if peak else None,
               best_invalid_rate=best_invalid["rate"] if best_invalid else None,
               trials=trials, rule=RULES[SERVER_RULE])
    res["markdown"] = md + "\n\n" + res["markdown"]
    if out_dir is not None:
        write_json_atomic(out_dir / "find_peak.json", {
            "peak_rate": res["peak_rate"], "best_invalid_rate": res["best_invalid_rate"], "rule": res["rule"],
            "percentile": PEAK_PERCENTILE, "trial_s": search.trial_s, "min_queries": search.floor,
            "min_achieved_ratio": search.min_achieved_ratio, "trials": trials, "slo": slo.to_dict(),
            "signature": signature(**describe, **spec.describe())})
    return res
