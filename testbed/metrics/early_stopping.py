"""MLPerf LoadGen's early stopping: is a tail-latency claim supported by the queries run?

Pure maths on counts (no clock, no I/O, no scipy).  :func:`binomial_cdf` is the binomial
tail, :func:`min_passing_under` LoadGen's ``find_min_passing``, :func:`early_stopping` the
verdict from counts and :func:`tail_claim` the verdict from a latency list.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from testbed.errors import ConfigError

__all__ = ["binomial_cdf", "early_stopping", "min_passing_under", "min_queries", "tail_claim"]

# LoadGen (loadgen/early_stopping.cc, results.cc) treats each query as a Bernoulli trial
# that is "over latency" with probability 1 - p if the true p-quantile sat exactly at the
# bound.  odds(h, t, p) = P(X <= t), X ~ Binomial(h + t, 1 - p), is the chance of seeing at
# most t over-latency queries among h + t; LoadGen writes it as BetaRegularized[p, h, 1 + t].
# find_min_passing(t) is the least h with odds(h, t, p) < 1 - c.  For a percentile estimate
# (SingleStream / MultiStream) it takes the largest t with n >= h(t) + t and reports the t-th
# largest latency; that estimate is under the bound iff at most t - 1 queries are over it.
# So with k queries over the bound the claim passes iff n >= h(k + 1) + k + 1, and the
# minimum run (k = 0) is h(1) + 1 queries: 64 for p90 and 662 for p99 at c = 0.99.


def _check_fraction(name: str, v: float, hint: str) -> None:
    if not isinstance(v, numbers.Real) or isinstance(v, bool) or not 0.0 < v < 1.0:
        raise ConfigError(name, v, "a fraction in (0, 1)", hint=hint)


def _check_pc(percentile: float, confidence: float) -> None:
    _check_fraction("percentile", percentile, "use 0.90 for p90, 0.99 for p99")
    _check_fraction("confidence", confidence, "MLPerf uses 0.99")


def binomial_cdf(k: int, n: int, q: float) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(n, q)``, summed in log space (no scipy).

    ``log pmf(x) = lgamma(n+1) - lgamma(x+1) - lgamma(n-x+1) + x log q + (n-x) log(1-q)``;
    the log binomial coefficients of ``x = 0..k`` are built as a cumulative sum of
    ``log((n-x)/(x+1))`` (vectorised; agrees with ``math.lgamma`` to ~1e-12 relative) and
    the terms are added with log-sum-exp, so large ``n`` neither underflows nor is slow.
    """
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if q <= 0.0:
        return 1.0
    if q >= 1.0:
        return 0.0
    lq, lp = math.log(q), math.log1p(-q)
    x = np.arange(k, dtype=float)
    steps = np.log(n - x) - np.log(x + 1.0) + (lq - lp)
    logs = n * lp + np.concatenate(([0.0], np.cumsum(steps)))
    m = float(logs.max())
    return min(1.0, math.exp(m) * float(np.exp(logs - m).sum()))


def _odds(h: int, t: int, p: float) -> float:
    return binomial_cdf(t, h + t, 1.0 - p)


def min_passing_under(t: int, percentile: float, confidence: float = 0.99) -> int:
    """LoadGen's ``find_min_passing``: least ``h >= 0`` with ``P(Bin(h + t, 1 - p) <= t) < 1 - c``.

    The number of under-latency queries that, next to ``t`` over-latency ones, supports
    "the p-quantile is under the bound" at confidence ``c``.
    """
    _check_pc(percentile, confidence)
    if t < 0:
        raise ConfigError("t", t, "a non-negative integer")
    target = 1.0 - confidence
    # odds is decreasing in h and odds(0) = 1 >= target: bracket [lo, hi) then bisect.
    lo = 0
    hi = max(1, math.ceil(t * percentile / (1.0 - percentile)))
    while _odds(hi, t, percentile) >= target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _odds(mid, t, percentile) < target:
            hi = mid
        else:
            lo = mid
    return hi


def min_queries(percentile: float, confidence: float = 0.99) -> int:
    """Fewest queries for any early-stopping claim at ``percentile``: ``h(1) + 1``.

    64 for p90 and 662 for p99 at confidence 0.99 (LoadGen's "Need to process at least").
    """
    return min_passing_under(1, percentile, confidence) + 1


def early_stopping(
    n_total: int, n_over_bound: int, percentile: float, confidence: float = 0.99
) -> dict[str, Any]:
    """MLPerf LoadGen's early-stopping verdict on "p-quantile <= bound".

    Given ``n_total`` queries of which ``n_over_bound`` (k) exceeded the bound, returns:

    * ``min_queries``: ``h(1) + 1``, the fewest queries for any claim;
    * ``valid``: ``n_total >= min_queries`` (otherwise "not enough queries", never a pass);
    * ``required_queries``: ``h(k + 1) + k + 1``, the run length a pass needs with k over;
    * ``max_over_allowed``: the largest k' with ``n_total >= h(k' + 1) + k' + 1`` (i.e.
      LoadGen's largest t, minus one), None when not valid;
    * ``passed``: ``valid and k <= max_over_allowed``;

    plus the inputs (``n``, ``n_over``, ``percentile``, ``confidence``), where
    ``h(t) = min_passing_under(t, percentile, confidence)``.
    """
    _check_pc(percentile, confidence)
    if not isinstance(n_total, numbers.Integral) or n_total < 0:
        raise ConfigError("n_total", n_total, "a non-negative integer")
    if not isinstance(n_over_bound, numbers.Integral) or not 0 <= n_over_bound <= n_total:
        raise ConfigError("n_over_bound", n_over_bound, f"an integer in [0, n_total={n_total}]")

    def need(t: int) -> int:  # queries needed to support the t-th largest as the estimate
        return min_passing_under(t, percentile, confidence) + t

    min_q = need(1)
    valid = n_total >= min_q
    max_over: int | None = None
    if valid:
        # need(t) increases with t: largest t in [1, n_total] with need(t) <= n_total.
        # Invariant need(lo) <= n_total < need(hi).  need(t) >= t rules out t > n_total, and
        # need(t) is close to t / (1 - p), so t ~ n_total * (1 - p) + 1 usually brackets it
        # already (checked, because the shortcut is not a theorem for every confidence).
        lo, hi = 1, n_total + 1
        guess = min(hi, int(n_total * (1.0 - percentile)) + 2)
        if guess > lo and need(guess) > n_total:
            hi = guess
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if need(mid) <= n_total:
                lo = mid
            else:
                hi = mid
        max_over = lo - 1
    required = need(int(n_over_bound) + 1)
    return {
        "n": int(n_total),
        "n_over": int(n_over_bound),
        "percentile": float(percentile),
        "confidence": float(confidence),
        "min_queries": min_q,
        "valid": valid,
        "required_queries": required,
        "max_over_allowed": max_over,
        "passed": valid and n_total >= required,
    }


def tail_claim(
    latencies_ms: Iterable[float | None], bound_ms: float, percentile: float, confidence: float = 0.99
) -> dict[str, Any]:
    """Pass/fail of "the ``percentile`` latency is <= ``bound_ms``" by MLPerf early stopping.

    A latency counts as over the bound when strictly greater (as in LoadGen).  ``None``
    entries (undefined samples, e.g. TPOT of a one-token answer) are dropped; pass a failed
    request as ``math.inf`` to count it as over the bound.  Returns :func:`early_stopping`'s
    dict plus ``bound_ms``, ``estimate_ms`` (LoadGen's early-stopping percentile estimate:
    the (max_over_allowed + 1)-th largest latency, None when not valid) and a human
    ``reason`` such as ``"not enough queries: 40 < 64"``.
    """
    if not isinstance(bound_ms, numbers.Real) or isinstance(bound_ms, bool) or not bound_ms > 0:
        raise ConfigError("bound_ms", bound_ms, "a positive number of milliseconds")
    sample = sorted(float(v) for v in latencies_ms if v is not None)
    n = len(sample)
    n_over = sum(1 for v in sample if v > bound_ms)
    res = early_stopping(n, n_over, percentile, confidence)
    pname = f"p{percentile * 100:g}"
    estimate = sample[n - res["max_over_allowed"] - 1] if res["valid"] else None
    if not res["valid"]:
        reason = f"not enough queries: {n} < {res['min_queries']}"
    elif res["passed"]:
        reason = (
            f"{pname} <= {bound_ms:g} ms at {confidence:.0%} confidence: {n_over} of {n} queries over "
            f"the bound (at most {res['max_over_allowed']} allowed)"
        )
    else:
        reason = (
            f"{pname} > {bound_ms:g} ms: {n_over} of {n} queries over the bound, at most "
            f"{res['max_over_allowed']} allowed at {n} queries (a pass with {n_over} over needs "
            f"{res['required_queries']} queries)"
        )
    res.update(bound_ms=float(bound_ms), estimate_ms=estimate, reason=reason)
    return res
