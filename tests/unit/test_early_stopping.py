"""MLPerf LoadGen early stopping (testbed.metrics.early_stopping), against values checked by hand.

Pure counts and short latency lists: no clock, no I/O.
"""

from __future__ import annotations

import math

import pytest

from testbed.errors import ConfigError
from testbed.metrics.early_stopping import (
    ESTIMATE_RULE,
    SERVER_RULE,
    early_stopping,
    min_passing_under,
    min_queries,
    server_early_stopping,
    server_min_queries,
    tail_claim,
)


def test_min_queries_match_mlperf() -> None:
    assert min_queries(0.90) == 64
    assert min_queries(0.99) == 662
    with pytest.raises(ConfigError, match="percentile"):
        min_queries(99)


def test_early_stopping_overlatency_allowance() -> None:
    r = early_stopping(100, 0, 0.90)
    assert (r["enough_queries"], r["passed"], r["min_queries"], r["required_queries"]) == (True, True, 64, 64)
    assert r["max_over_allowed"] == 2  # LoadGen's largest t at n=100 is 3 -> 2 over allowed
    assert early_stopping(100, 2, 0.90)["passed"] is True
    over3 = early_stopping(100, 3, 0.90)
    assert over3["passed"] is False and over3["required_queries"] > 100
    assert early_stopping(63, 0, 0.90)["enough_queries"] is False
    assert early_stopping(661, 0, 0.99)["enough_queries"] is False
    assert early_stopping(662, 0, 0.99)["passed"] is True
    assert early_stopping(662, 1, 0.99)["passed"] is False


def test_tail_claim_with_too_few_queries_is_not_a_pass() -> None:
    claim = tail_claim([10.0] * 40, bound_ms=50.0, percentile=0.90)
    assert claim["enough_queries"] is False and claim["passed"] is False
    assert (claim["n"], claim["n_over"], claim["min_queries"]) == (40, 0, 64)
    assert claim["reason"] == "not enough queries: 40 < 64"
    assert claim["estimate_ms"] is None


def test_tail_claim_pass_and_fail() -> None:
    lat = [float(i) for i in range(1, 101)]  # 1..100 ms
    ok = tail_claim(lat, bound_ms=98.0, percentile=0.90)  # 2 over (99, 100): allowed at n=100
    assert (ok["enough_queries"], ok["passed"], ok["n_over"]) == (True, True, 2)
    assert ok["estimate_ms"] == 98.0  # the 3rd largest latency
    bad = tail_claim(lat, bound_ms=97.0, percentile=0.90)  # 3 over: too many
    assert (bad["enough_queries"], bad["passed"], bad["n_over"]) == (True, False, 3)
    assert "3 of 100" in bad["reason"]
    # undefined samples are dropped; inf (a failed request) counts as over the bound
    with_none = tail_claim(lat[:63] + [None, math.inf], bound_ms=98.0, percentile=0.90)
    assert (with_none["n"], with_none["n_over"], with_none["passed"]) == (64, 1, False)


# --- the Server rule: valid iff n >= h(t) + t ---------------------------------------------


def _odds_by_hand(h: int, t: int, p: float) -> float:
    """P(at most t over among h + t) with P(over) = 1 - p, by the binomial sum (math.comb)."""
    return sum(math.comb(h + t, x) * (1 - p) ** x * p ** (h + t - x) for x in range(t + 1))


def test_min_passing_under_matches_the_closed_forms() -> None:
    # t = 0: the least h with p^h < 1 - c is ceil(log(0.01) / log(p)): 459 for p99, 44 for p90
    assert min_passing_under(0, 0.99) == math.ceil(math.log(0.01) / math.log(0.99)) == 459
    assert min_passing_under(0, 0.90) == math.ceil(math.log(0.01) / math.log(0.90)) == 44
    # t = 1: p^(h+1) + (h+1)(1-p)p^h crosses 0.01 between h = 660 (0.0100010) and 661 (0.0099140)
    assert _odds_by_hand(660, 1, 0.99) >= 0.01 > _odds_by_hand(661, 1, 0.99)
    assert min_passing_under(1, 0.99) == 661
    for t in range(6):  # and the vectorised binomial agrees with the plain sum on both sides of h(t)
        h = min_passing_under(t, 0.90)
        assert _odds_by_hand(h, t, 0.90) < 0.01 <= _odds_by_hand(h - 1, t, 0.90)
    assert server_min_queries(0.99) == 459 and server_min_queries(0.90) == 44


def test_server_rule_counts_overs_directly() -> None:
    assert server_early_stopping(459, 0, 0.99)["passed"] is True
    short = server_early_stopping(458, 0, 0.99)
    assert (short["enough_queries"], short["passed"], short["required_queries"]) == (False, False, 459)
    one = server_early_stopping(661, 1, 0.99)  # h(1) + 1 = 662
    assert (one["enough_queries"], one["passed"], one["required_queries"], one["max_over_allowed"]) == (
        True, False, 662, 0)
    assert server_early_stopping(662, 1, 0.99)["passed"] is True
    # p90, 100 queries: h(t) + t = 44, 64, 81, 97, 113 for t = 0..4 -> at most 3 over
    r = server_early_stopping(100, 3, 0.90)
    assert (r["passed"], r["max_over_allowed"], r["rule"]) == (True, 3, SERVER_RULE)
    assert server_early_stopping(100, 4, 0.90)["required_queries"] == 113
    # the Server rule allows one more over than the percentile-estimate rule at the same n
    assert early_stopping(100, 3, 0.90)["passed"] is False


def test_tail_claim_names_its_rule_and_counts_failures_as_over() -> None:
    lat = [10.0] * 458 + [math.inf]  # 459 issued, one failed
    server = tail_claim(lat, bound_ms=50.0, percentile=0.99, rule=SERVER_RULE)
    assert (server["rule"], server["n"], server["n_over"], server["passed"]) == (SERVER_RULE, 459, 1, False)
    assert server["required_queries"] == 662 and server["estimate_ms"] is None
    assert "a pass with 1 over needs 662 queries" in server["reason"]
    clean = tail_claim([10.0] * 459, bound_ms=50.0, percentile=0.99, rule=SERVER_RULE)
    assert clean["passed"] is True and "0 of 459 queries over" in clean["reason"]
    estimate = tail_claim([10.0] * 459, bound_ms=50.0, percentile=0.99)  # SingleStream rule: 662 at least
    assert (estimate["rule"], estimate["passed"], estimate["reason"]) == (
        ESTIMATE_RULE, False, "not enough queries: 459 < 662")
    with pytest.raises(ConfigError, match="rule"):
        tail_claim([1.0], 5.0, 0.99, rule="offline")
