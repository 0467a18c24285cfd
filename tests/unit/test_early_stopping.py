"""MLPerf LoadGen early stopping (testbed.metrics.early_stopping), against values checked by hand.

Pure counts and short latency lists: no clock, no I/O.
"""

from __future__ import annotations

import math

import pytest

from testbed.errors import ConfigError
from testbed.metrics.early_stopping import early_stopping, min_queries, tail_claim


def test_min_queries_match_mlperf() -> None:
    assert min_queries(0.90) == 64
    assert min_queries(0.99) == 662
    with pytest.raises(ConfigError, match="percentile"):
        min_queries(99)


def test_early_stopping_overlatency_allowance() -> None:
    r = early_stopping(100, 0, 0.90)
    assert (r["valid"], r["passed"], r["min_queries"], r["required_queries"]) == (True, True, 64, 64)
    assert r["max_over_allowed"] == 2  # LoadGen's largest t at n=100 is 3 -> 2 over allowed
    assert early_stopping(100, 2, 0.90)["passed"] is True
    over3 = early_stopping(100, 3, 0.90)
    assert over3["passed"] is False and over3["required_queries"] > 100
    assert early_stopping(63, 0, 0.90)["valid"] is False
    assert early_stopping(661, 0, 0.99)["valid"] is False
    assert early_stopping(662, 0, 0.99)["passed"] is True
    assert early_stopping(662, 1, 0.99)["passed"] is False


def test_tail_claim_with_too_few_queries_is_not_a_pass() -> None:
    claim = tail_claim([10.0] * 40, bound_ms=50.0, percentile=0.90)
    assert claim["valid"] is False and claim["passed"] is False
    assert (claim["n"], claim["n_over"], claim["min_queries"]) == (40, 0, 64)
    assert claim["reason"] == "not enough queries: 40 < 64"
    assert claim["estimate_ms"] is None


def test_tail_claim_pass_and_fail() -> None:
    lat = [float(i) for i in range(1, 101)]  # 1..100 ms
    ok = tail_claim(lat, bound_ms=98.0, percentile=0.90)  # 2 over (99, 100): allowed at n=100
    assert (ok["valid"], ok["passed"], ok["n_over"]) == (True, True, 2)
    assert ok["estimate_ms"] == 98.0  # the 3rd largest latency
    bad = tail_claim(lat, bound_ms=97.0, percentile=0.90)  # 3 over: too many
    assert (bad["valid"], bad["passed"], bad["n_over"]) == (True, False, 3)
    assert "3 of 100" in bad["reason"]
    # undefined samples are dropped; inf (a failed request) counts as over the bound
    with_none = tail_claim(lat[:63] + [None, math.inf], bound_ms=98.0, percentile=0.90)
    assert (with_none["n"], with_none["n_over"], with_none["passed"]) == (64, 1, False)
