"""--find-peak (testbed.client.peak): trial sizing, the pass rule, the MLPerf Server-rule claim, the
bracket-and-bisect search, and how a peak without a valid claim is labelled.

The trials run on a scripted server over a virtual clock (no sleeps, no timing asserts): a FIFO
server that takes ``service_ms`` per request, so its capacity is ``1000 / service_ms`` req/s and
every number follows from the seeded Poisson schedule.
"""

from __future__ import annotations

import json
import math
import re

import pytest

from testbed.cli import main
from testbed.client.bench import claim_rule
from testbed.client.loadgen import LoadSpec, poisson_offsets_ns
from testbed.client.peak import PeakSearch, find_peak, judge_trial, pick_peak, search_rates
from testbed.datasets import Example
from testbed.errors import ConfigError
from testbed.metrics.early_stopping import ESTIMATE_RULE, SERVER_RULE
from testbed.metrics.records import RequestRecord
from testbed.metrics.slo import SLO

MS = 1_000_000
EXAMPLES = [Example(str(i), f"w{i} a b c", reference=f"w{i} a b c") for i in range(30)]


def fifo_server(service_ms: float, tokens: int = 4, calls: list[LoadSpec] | None = None):
    """A trial runner: one request at a time, ``tokens`` chunks spread evenly over ``service_ms``."""

    def run_trial(spec: LoadSpec) -> list[RequestRecord]:
        if calls is not None:
            calls.append(spec)
        assert spec.scenario == "server" and spec.num_requests is not None
        free, recs = 0, []
        for k, s in enumerate(poisson_offsets_ns(spec.rate, spec.seed, n=spec.num_requests)):
            start = max(s, free)
            chunks = [int(start + service_ms * MS * (j + 1) / tokens) for j in range(tokens)]
            free = chunks[-1]
            ex = EXAMPLES[k % len(EXAMPLES)]
            recs.append(RequestRecord(f"{k}:{ex.id}", s, s, chunks, [1] * tokens, free, 4, tokens, output=ex.text))
        return recs

    return run_trial


def _peak(runner, search: PeakSearch, slo: SLO | None = None, **kw):
    return find_peak(lambda: None, EXAMPLES, LoadSpec(warmup=0, seed=1), slo or SLO(e2e_ms=40.0),
                     {"target": "scripted fifo"}, progress=False, search=search, run_trial=runner, **kw)


def test_search_brackets_then_bisects_to_the_threshold():
    def trial(rate):  # passes iff rate <= 37
        return {"rate": rate, "search_ok": rate <= 37}

    rates = [t["rate"] for t in search_rates(trial, 10.0, max_trials=8, bisect_steps=4)]
    # double 10 -> 20 -> 40 (fail), then midpoints of [20, 40], [30, 40], [35, 40], [35, 37.5]
    assert rates == [10.0, 20.0, 40.0, 30.0, 35.0, 37.5, 36.25]
    down = [t["rate"] for t in search_rates(trial, 100.0, max_trials=8, bisect_steps=1)]
    assert down == [100.0, 50.0, 25.0, 37.5]  # halve while failing, then one midpoint of [25, 50]


def test_find_peak_brackets_and_bisects_on_a_scripted_server():
    calls: list[LoadSpec] = []
    search = PeakSearch(start_rate=10.0, trial_s=10.0, max_trials=6, bisect_steps=4)
    res = _peak(fifo_server(10.0, calls=calls), search)  # capacity 100 req/s; E2E alone is 10 ms
    trials = res["trials"]
    rates = [t["rate"] for t in trials]
    assert rates[:3] == [10.0, 20.0, 40.0] and all(t["ok"] for t in trials[:3])
    # every trial after the bracket is the midpoint of the highest ok and the lowest not-ok rate before it
    n_bracket = next(i for i, t in enumerate(trials) if not t["ok"]) + 1
    assert len(trials) - n_bracket >= 3  # bisection really ran
    for i in range(n_bracket, len(trials)):
        lo = max(t["rate"] for t in trials[:i] if t["ok"])
        hi = min(t["rate"] for t in trials[:i] if not t["ok"])
        assert rates[i] == (lo + hi) / 2
    assert res["peak_rate"] == max(t["rate"] for t in trials if t["ok"]) < 100
    assert all(not t["ok"] for t in trials if t["rate"] > res["peak_rate"])
    # sized by duration with a minimum: max(459, ceil(rate x 10 s)) requests, all run as the server scenario
    assert [c.num_requests for c in calls] == [max(459, math.ceil(r * 10.0)) for r in rates]
    assert [t["queries"] for t in trials] == [c.num_requests for c in calls]
    peak = next(t for t in trials if t["rate"] == res["peak_rate"])
    assert peak["claim_valid"] and peak["claims"]["p99_e2e"]["rule"] == SERVER_RULE
    md = res["markdown"]
    assert md.startswith(f"## Peak Poisson rate: {res['peak_rate']:.4g} req/s")
    table = md.split("\n\n## Server at")[0]
    assert "Server rule: n >= h(t) + t" in table and table.count("\n| ") == len(trials) + 1  # header + a row each


def test_a_peak_without_a_valid_claim_is_labelled_never_presented(tmp_path):
    # 100-request trials: under the 459 a p99 claim needs, so no claim can be valid
    search = PeakSearch(start_rate=10.0, trial_s=1.0, min_queries=100, max_trials=4, bisect_steps=2)
    res = _peak(fifo_server(10.0), search, out_dir=tmp_path)
    trials = res["trials"]
    assert [t["queries"] for t in trials] == [100] * len(trials)
    assert not any(t["claim_valid"] for t in trials)
    assert [t["rate"] for t in trials][:3] == [10.0, 20.0, 40.0]  # the search still follows the SLO check
    assert res["peak_rate"] is None
    assert res["best_invalid_rate"] == max(t["rate"] for t in trials if t["passed"])
    md = res["markdown"]
    assert md.startswith("## No valid peak")
    assert f"Best invalid trial (**not** a peak): {res['best_invalid_rate']:.4g} req/s" in md
    assert "not enough queries: 100 < 459" in md and "its tail claim is NOT valid, so this is not a peak" in md
    saved = json.loads((tmp_path / "find_peak.json").read_text())
    assert saved["peak_rate"] is None and saved["best_invalid_rate"] == res["best_invalid_rate"]
    assert saved["min_queries"] == 100 and len(saved["trials"]) == len(trials)


def _records(e2e_ms: list[float], gap_ms: float = 10.0) -> list[RequestRecord]:
    out = []
    for k, e in enumerate(e2e_ms):
        s = int(k * gap_ms * MS)
        out.append(RequestRecord(f"{k}:x", s, s, [s + MS, s + int(e * MS)], [1, 1], s + int(e * MS), 3, 2))
    return out


def test_passing_p99_with_an_invalid_claim_is_not_ok():
    # 459 requests, 2 over a 50 ms bound: the p99 (linear) is under it, but the Server rule needs
    # h(2) + 2 = 838 requests with 2 over
    lat = [20.0] * 457 + [60.0, 70.0]
    row = judge_trial(_records(lat), 100.0, SLO(e2e_ms=50.0), PeakSearch())
    assert row["p99_e2el_ms"] < 50 and row["passed"] is True
    assert row["claims"]["p99_e2e"]["required_queries"] == 838
    assert (row["claim_valid"], row["ok"], row["search_ok"]) == (False, False, False)
    assert "2 of 459 queries over the bound" in row["claim_why"]
    clean = judge_trial(_records([20.0] * 459), 100.0, SLO(e2e_ms=50.0), PeakSearch())
    assert (clean["claim_valid"], clean["ok"]) == (True, True)
    # pick_peak: the lower valid trial is the peak; the higher invalid one is only "best invalid"
    peak, best_invalid = pick_peak([{**clean, "rate": 50.0}, {**row, "rate": 80.0}])
    assert peak is not None and peak["rate"] == 50.0 and best_invalid is not None and best_invalid["rate"] == 80.0


def test_achieved_rate_below_095_of_offered_fails_the_trial():
    run = fifo_server(10.0)  # capacity 100 req/s
    loose = SLO(e2e_ms=1e7)  # the latency bound never binds: only the rate check can fail a trial
    over = judge_trial(run(LoadSpec("server", rate=150.0, num_requests=600, seed=1)), 150.0, loose, PeakSearch())
    assert over["passed"] is False and over["achieved_ratio"] < 0.95
    assert over["why"].startswith("achieved ") and "< 0.95 x offered" in over["why"]
    assert over["achieved_rate"] == pytest.approx(100.0, rel=0.02)  # the server's capacity
    under = judge_trial(run(LoadSpec("server", rate=50.0, num_requests=600, seed=1)), 50.0, loose, PeakSearch())
    assert under["passed"] is True and under["achieved_ratio"] >= 0.95
    # offered is the schedule's own rate, (n - 1) / (s_n - s_1), not the nominal one
    offs = poisson_offsets_ns(50.0, 1, n=600)
    assert under["offered_rate"] == pytest.approx(599 / ((offs[-1] - offs[0]) / 1e9))


def test_claim_rule_per_scenario_and_search_validation():
    assert claim_rule("server") == (SERVER_RULE, 0.99)
    assert claim_rule("singlestream") == (ESTIMATE_RULE, 0.90)
    assert claim_rule("concurrency") == (ESTIMATE_RULE, 0.99)
    assert PeakSearch().floor == 459 and PeakSearch(trial_s=60).queries(20.0) == 1200
    with pytest.raises(ConfigError, match="min_queries"):
        PeakSearch(min_queries=1)
    with pytest.raises(ConfigError, match="trial_s"):
        PeakSearch(trial_s=0)


def test_cli_find_peak_on_the_null_engine(tmp_path, capsys):
    out = tmp_path / "peak"
    rc = main(["bench", "--engine", "null", "--target", "inproc", "--find-peak", "--slo", "e2e=2000", "--rate", "40",
               "--duration", "1", "--peak-min-queries", "20", "--peak-trials", "2", "--peak-steps", "0",
               "--warmup", "0", "--max-new-tokens", "4", "--no-progress", "--out", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    saved = json.loads((out / "find_peak.json").read_text())
    rates = [t["rate"] for t in saved["trials"]]
    assert rates[0] == 40.0 and len(rates) <= 2
    assert [t["queries"] for t in saved["trials"]] == [max(20, math.ceil(r)) for r in rates]
    assert saved["peak_rate"] is None  # 40-80 requests are too few for a p99 claim
    assert "Server rule" in saved["rule"] and "find-peak: 40 req/s, 40 requests" in captured.err
    assert re.search(r"\| not valid: p99_e2e \d+/40 over, needs \d+ \|", captured.out)  # the first trial's row
    assert main(["bench", "--engine", "null", "--find-peak", "--slo", "e2e=1", "--num-requests", "5"]) == 2
    assert "drop --num-requests" in capsys.readouterr().err
