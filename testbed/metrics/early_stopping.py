"""MLPerf LoadGen's early stopping: is a tail-latency claim supported by the queries run?

Pure maths on counts (no clock, no I/O, no scipy).  :func:`binomial_cdf` is the binomial
tail, :func:`min_passing_under` LoadGen's ``find_min_passing`` (``h(t)``), and two rules,
as LoadGen applies them per scenario (``loadgen/results.cc``, ``EarlyStopping``), for the
claim "the p-quantile of the latency is <= the bound" at confidence ``c`` (0.99), with ``t``
of ``n`` queries over the bound:

* :data:`SERVER_RULE` (Server scenario, :func:`server_early_stopping`): the claim holds iff
  ``n >= h(t) + t``.  Fewest queries (``t = 0``): ``h(0) = ceil(log(1 - c) / log(p))``,
  459 for p99 and 44 for p90; one query over needs 662 (p99).
* :data:`ESTIMATE_RULE` (SingleStream / MultiStream, :func:`early_stopping`): the
  early-stopping percentile estimate -- the ``T``-th largest latency, ``T`` the largest
  ``t`` with ``n >= h(t) + t`` -- must be <= the bound, i.e. ``n >= h(t + 1) + t + 1``.
  Fewest queries: ``h(1) + 1``, 64 for p90 and 662 for p99.

:func:`tail_claim` applies either rule to a latency list.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from testbed.errors import ConfigError

__all__ = [
    "ESTIMATE_RULE",
    "RULES",
    "SERVER_RULE",
    "binomial_cdf",
    "early_stopping",
    "min_passing_under",
    "min_queries",
    "server_early_stopping",
    "server_min_queries",
    "tail_claim",
]

#: LoadGen's Server-scenario rule: valid iff queries issued >= h(t) + t.
SERVER_RULE = "server"
#: LoadGen's SingleStream / MultiStream rule: the early-stopping percentile estimate <= the bound.
ESTIMATE_RULE = "percentile-estimate"
#: How each rule is named in reports.
RULES = {
    SERVER_RULE: "MLPerf LoadGen early stopping, Server rule: n >= h(t) + t (t of n queries over the bound)",
    ESTIMATE_RULE: "MLPerf LoadGen early stopping, SingleStream rule: the early-stopping percentile estimate "
                   "<= the bound (n >= h(t + 1) + t + 1)",
}

# LoadGen (loadgen/early_stopping.cc, results.cc) treats each query as a Bernoulli trial
# that is "over latency" with probability 1 - p if the true p-quantile sat exactly at the
# bound.  odds(h, t, p) = P(X <= t), X ~ Binomial(h + t, 1 - p), is the chance of seeing at
# most t over-latency queries among h + t; LoadGen writes it as BetaRegularized[p, h, 1 + t].
# find_min_passing(t) is the least h with odds(h, t, p) < 1 - c.  For a percentile estimate
# (SingleStream / MultiStream) it takes the largest t with n >= h(t) + t and reports the t-th
# largest latency; that estimate is under the bound iff at most t - 1 queries are over it.
# So with k queries over the bound the claim passes iff n >= h(k + 1) + k + 1, and the
# minimum run (k = 0) is h(1) + 1 queries: 64 for p90 and 662 for p99 at c = 0.99.  The
# Server rule instead counts t = k directly: it passes iff n >= h(k) + k (results.cc).


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
    """Fewest queries for any claim by the percentile-estimate rule: ``h(1) + 1``.

    64 for p90 and 662 for p99 at confidence 0.99 (LoadGen's "Need to process at least").
    """
    return min_passing_under(1, percentile, confidence) + 1


def server_min_queries(percentile: float, confidence: float = 0.99) -> int:
    """Fewest queries for any claim by the Server rule: ``h(0) = ceil(log(1 - c) / log(p))``.

    459 for p99 and 44 for p90 at confidence 0.99 (a run with no query over the bound).
    """
    return min_passing_under(0, percentile, confidence)


def _check_counts(n_total: int, n_over_bound: int) -> None:
    if not isinstance(n_total, numbers.Integral) or n_total < 0:
        raise ConfigError("n_total", n_total, "a non-negative integer")
    if not isinstance(n_over_bound, numbers.Integral) or not 0 <= n_over_bound <= n_total:
        raise ConfigError("n_over_bound", n_over_bound, f"an integer in [0, n_total={n_total}]")


def _largest_t(n_total: int, lo: int, percentile: float, confidence: float) -> int | None:
    """The largest ``t >= lo`` with ``h(t) + t <= n_total``; None when even ``t = lo`` needs more."""

    def need(t: int) -> int:
        return min_passing_under(t, percentile, confidence) + t

    if need(lo) > n_total:
        return None
    # need(t) increases with t: invariant need(lo) <= n_total < need(hi).  need(t) >= t rules out
    # t > n_total, and need(t) is close to t / (1 - p), so t ~ n_total * (1 - p) + 1 usually
    # brackets it already (checked, because the shortcut is not a theorem for every confidence).
    hi = n_total + 1
    guess = min(hi, int(n_total * (1.0 - percentile)) + 2)
    if guess > lo and need(guess) > n_total:
        hi = guess
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if need(mid) <= n_total:
            lo = mid
        else:
            hi = mid
    return lo


def early_stopping(
    n_total: int, n_over_bound: int, percentile: float, confidence: float = 0.99
) -> dict[str, Any]:
    """The percentile-estimate rule (LoadGen SingleStream / MultiStream) on "p-quantile <= bound".

    Given ``n_total`` queries of which ``n_over_bound`` (k) exceeded the bound, returns:

    * ``rule``: :data:`ESTIMATE_RULE`;
    * ``min_queries``: ``h(1) + 1``, the fewest queries for any claim;
    * ``enough_queries``: ``n_total >= min_queries`` (otherwise "not enough queries", never a pass);
    * ``required_queries``: ``h(k + 1) + k + 1``, the run length a pass needs with k over;
    * ``max_over_allowed``: the largest k' with ``n_total >= h(k' + 1) + k' + 1`` (i.e.
      LoadGen's largest t, minus one), None without enough queries;
    * ``passed``: ``enough_queries and k <= max_over_allowed`` -- the claim is valid;

    plus the inputs (``n``, ``n_over``, ``percentile``, ``confidence``), where
    ``h(t) = min_passing_under(t, percentile, confidence)``.
    """
    _check_pc(percentile, confidence)
    _check_counts(n_total, n_over_bound)
    largest = _largest_t(int(n_total), 1, percentile, confidence)
    required = min_passing_under(int(n_over_bound) + 1, percentile, confidence) + int(n_over_bound) + 1
    return {
        "rule": ESTIMATE_RULE,
        "n": int(n_total),
        "n_over": int(n_over_bound),
        "percentile": float(percentile),
        "confidence": float(confidence),
        "min_queries": min_queries(percentile, confidence),
        "enough_queries": largest is not None,
        "required_queries": required,
        "max_over_allowed": None if largest is None else largest - 1,
        "passed": n_total >= required,
    }


def server_early_stopping(
    n_total: int, n_over_bound: int, percentile: float, confidence: float = 0.99
) -> dict[str, Any]:
    """The Server rule (LoadGen's Server scenario) on "p-quantile <= bound".

    With ``t = n_over_bound`` of ``n_total`` issued queries over the bound, the claim is valid
    (``passed``) iff ``n_total >= h(t) + t`` (``required_queries``).  Also returns ``rule``
    (:data:`SERVER_RULE`), ``min_queries`` = ``h(0)`` (459 for p99), ``enough_queries``
    (``n_total >= h(0)``), ``max_over_allowed`` (the largest t' with ``h(t') + t' <= n_total``,
    None without enough queries) and the inputs, with the keys of :func:`early_stopping`.
    """
    _check_pc(percentile, confidence)
    _check_counts(n_total, n_over_bound)
    t = int(n_over_bound)
    largest = _largest_t(int(n_total), 0, percentile, confidence)
    required = min_passing_under(t, percentile, confidence) + t
    return {
        "rule": SERVER_RULE,
        "n": int(n_total),
        "n_over": t,
        "percentile": float(percentile),
        "confidence": float(confidence),
        "min_queries": server_min_queries(percentile, confidence),
        "enough_queries": largest is not None,
        "required_queries": required,
        "max_over_allowed": largest,
        "passed": n_total >= required,
    }


def _reason(res: dict[str, Any], bound_ms: float) -> str:
    n, k, c = res["n"], res["n_over"], res["confidence"]
    pname = f"p{res['percentile'] * 100:g}"
    if not res["enough_queries"]:
        return f"not enough queries: {n} < {res['min_queries']}"
    if res["passed"]:
        return (f"{pname} <= {bound_ms:g} ms at {c:.0%} confidence: {k} of {n} queries over "
                f"the bound (at most {res['max_over_allowed']} allowed)")
    return (f"{pname} <= {bound_ms:g} ms not supported at {c:.0%} confidence: {k} of {n} queries over the "
            f"bound, at most {res['max_over_allowed']} allowed at {n} queries (a pass with {k} over needs "
            f"{res['required_queries']} queries)")


def tail_claim(
    latencies_ms: Iterable[float | None], bound_ms: float, percentile: float, confidence: float = 0.99,
    rule: str = ESTIMATE_RULE,
) -> dict[str, Any]:
    """Is "the ``percentile`` latency is <= ``bound_ms``" valid by MLPerf early stopping under ``rule``?

    ``rule`` is :data:`ESTIMATE_RULE` (SingleStream; :func:`early_stopping`) or
    :data:`SERVER_RULE` (Server; :func:`server_early_stopping`).  A latency counts as over the
    bound when strictly greater (as in LoadGen).  ``None`` entries (undefined samples, e.g. TPOT
    of a one-token answer) are dropped; pass a failed request as ``math.inf`` to count it as
    over the bound.  Returns the rule's dict plus ``bound_ms``, ``estimate_ms`` (the
    percentile-estimate rule's early-stopping estimate: the (max_over_allowed + 1)-th largest
    latency; None without enough queries and under the Server rule, which makes no estimate)
    and a human ``reason`` such as ``"not enough queries: 40 < 64"``.
    """
    if rule not in RULES:
        raise ConfigError("rule", rule, ", ".join(RULES))
    if not isinstance(bound_ms, numbers.Real) or isinstance(bound_ms, bool) or not bound_ms > 0:
        raise ConfigError("bound_ms", bound_ms, "a positive number of milliseconds")
    sample = sorted(float(v) for v in latencies_ms if v is not None)
    n = len(sample)
    n_over = sum(1 for v in sample if v > bound_ms)
    judge = server_early_stopping if rule == SERVER_RULE else early_stopping
    res = judge(n, n_over, percentile, confidence)
    estimate = None
    if rule == ESTIMATE_RULE and res["enough_queries"]:
        estimate = sample[n - res["max_over_allowed"] - 1]
    res.update(bound_ms=float(bound_ms), estimate_ms=estimate, reason=_reason(res, bound_ms))
    return res
