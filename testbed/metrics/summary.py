"""Metrics as pure functions over :class:`~testbed.metrics.records.RequestRecord`.

Contract: nothing here prints, reads the clock, touches files or the network; every
function maps records (raw ``perf_counter_ns`` integers) to numbers.  Rendering lives in
:mod:`testbed.report`.  Formulas and symbols follow ``design/METRICS.md``:

================  =====================================  ===================================
metric            formula (per request i)                function
================  =====================================  ===================================
dispatch delay    ``a_i - s_i``                          :func:`dispatch_delay_ms`
TTFT              ``f_i - s_i`` (schedule-relative)      :func:`ttft_ms`
TTFT (sent)       ``f_i - a_i``                          :func:`ttft_sent_ms`
E2E latency       ``e_i - s_i``                          :func:`e2e_ms`
TPOT              ``(e_i - f_i) / (N_i - 1)``, N_i >= 2  :func:`tpot_ms`
ITL               ``t_ik - t_i(k-1)`` for every chunk k  :func:`itl_ms`
encoder time      ``encoder_done_ns - a_i`` (engine)     :func:`encoder_ms`
================  =====================================  ===================================

with ``s_i = schedule_ns``, ``a_i = send_ns``, ``t_ik = chunk_ns[k]``, ``f_i = chunk_ns[0]``,
``e_i = chunk_ns[-1]`` (the last *token* chunk, never ``done_ns``) and ``N_i = n_out``.

Rules that keep numbers honest (each pinned by ``tests/unit/test_metrics.py``):

* *Undefined is None, never 0.*  A per-request value that does not exist returns ``None``;
  an empty sample gives ``None`` statistics, rendered :data:`NA` (``"n/a"``).
* *A request is completed* iff ``ok`` is true, it has at least one token chunk and
  ``n_out > 0`` (:func:`is_completed`).  Anything else is failed: it is counted with its
  error (``"no tokens"`` for an ``ok`` record that produced none) and yields no latency
  sample at all.
* *Warm-up records* are excluded from every number and only counted.
* Percentiles use ``numpy.percentile(method="linear")`` (:data:`PERCENTILE_METHOD`).

Per run, over completed non-warm-up records: duration ``T = max(e_i) - min(s_i)``,
request throughput ``completed / T``, output throughput ``sum(N_i) / T``, goodput
``(completed requests meeting every SLO) / T`` and SLO attainment
``100 * meeting / (completed + failed)``.

Tail-latency pass/fail claims use MLPerf LoadGen's early-stopping estimate
(:func:`early_stopping`, :func:`min_queries`, :func:`tail_claim`).
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from testbed.errors import ConfigError
from testbed.metrics.records import RequestRecord

__all__ = [
    "NA",
    "PERCENTILE_METHOD",
    "DEFAULT_PERCENTILES",
    "NO_TOKENS_ERROR",
    "SLO",
    "Summary",
    "binomial_cdf",
    "dispatch_delay_ms",
    "e2e_ms",
    "early_stopping",
    "encoder_ms",
    "failure_reason",
    "fmt",
    "is_completed",
    "itl_ms",
    "min_passing_under",
    "min_queries",
    "percentiles",
    "summarize",
    "tail_claim",
    "timed_tokens",
    "tpot_ms",
    "ttft_ms",
    "ttft_sent_ms",
]

#: Printed in every report next to the percentiles.
PERCENTILE_METHOD = "numpy.percentile(method='linear')"
#: Percentiles (in percent) computed by :func:`percentiles` by default.
DEFAULT_PERCENTILES: tuple[float, ...] = (50, 90, 95, 99)
#: How an undefined value (``None``) is rendered.
NA = "n/a"
#: The error recorded for an ``ok`` request that streamed no token.
NO_TOKENS_ERROR = "no tokens"

_NS_PER_MS = 1e6


def _ms(ns: int | float) -> float:
    return ns / _NS_PER_MS


# --------------------------------------------------------------------------------------
# Per request
# --------------------------------------------------------------------------------------


def failure_reason(r: RequestRecord) -> str | None:
    """Why ``r`` does not count as completed, or ``None`` when it does.

    ``r.error`` (or ``"failed"``) for ``ok=False``; :data:`NO_TOKENS_ERROR` for an ``ok``
    record without any token chunk or with ``n_out <= 0`` -- such a stream must fail
    rather than report a 0 ms latency.
    """
    if not r.ok:
        return r.error or "failed"
    if not r.chunk_ns or r.n_out <= 0:
        return NO_TOKENS_ERROR
    return None


def is_completed(r: RequestRecord) -> bool:
    """True iff ``r.ok``, at least one token chunk and ``n_out > 0``."""
    return failure_reason(r) is None


def ttft_ms(r: RequestRecord) -> float | None:
    """Schedule-relative time to first token ``(f_i - s_i)`` in ms (MLPerf).

    Includes dispatch delay: queueing behind a slow server counts.  None if not completed.
    """
    if not is_completed(r):
        return None
    return _ms(r.chunk_ns[0] - r.schedule_ns)


def ttft_sent_ms(r: RequestRecord) -> float | None:
    """Time to first token from the actual send, ``(f_i - a_i)`` in ms.  None if not completed."""
    if not is_completed(r):
        return None
    return _ms(r.chunk_ns[0] - r.send_ns)


def e2e_ms(r: RequestRecord) -> float | None:
    """End-to-end latency ``(e_i - s_i)`` in ms, ``e_i`` = last token chunk (not ``done_ns``).

    None if not completed.
    """
    if not is_completed(r):
        return None
    return _ms(r.chunk_ns[-1] - r.schedule_ns)


def timed_tokens(r: RequestRecord) -> int:
    """Tokens that arrived in timed chunks: ``min(N_i, sum(chunk_tokens))``.

    Equal to ``N_i`` when every token came in a chunk (testbed's server, the engine).  Smaller
    when the server counts a token in ``usage`` that no timed chunk carried -- a server that
    sends EOS as an empty chunk without token ids: ``e_i - f_i`` then spans one gap less.
    """
    if len(r.chunk_tokens) != len(r.chunk_ns):  # records without per-chunk counts
        return r.n_out
    return min(r.n_out, sum(r.chunk_tokens))


def tpot_ms(r: RequestRecord) -> float | None:
    """Time per output token ``(e_i - f_i) / (N_i - 1)`` in ms, TTFT excluded.

    ``N_i`` here counts what was timed (:func:`timed_tokens`): tokens that came in no timed
    chunk (an EOS sent as an empty chunk) are not divided into ``e_i - f_i``, which does not
    cover them.  Undefined (None) for ``N_i < 2`` -- excluded from samples, never 0 -- and also
    when all tokens arrived in a single chunk (``e_i == f_i`` by construction, so no inter-token
    time was observed; a 0 ms value there would be a fabricated sample).  None if not completed.
    """
    n = timed_tokens(r)
    if not is_completed(r) or n < 2 or len(r.chunk_ns) < 2:
        return None
    return _ms(r.chunk_ns[-1] - r.chunk_ns[0]) / (n - 1)


def itl_ms(r: RequestRecord) -> list[float] | None:
    """Inter-chunk gaps ``t_ik - t_i(k-1)`` in ms (``[]`` for one chunk); None if not completed.

    For a one-token-per-chunk stream ``sum(itl_ms) == e2e_ms - ttft_ms``.
    """
    if not is_completed(r):
        return None
    c = r.chunk_ns
    return [_ms(c[k] - c[k - 1]) for k in range(1, len(c))]


def dispatch_delay_ms(r: RequestRecord) -> float | None:
    """Client dispatch delay ``(a_i - s_i)`` in ms; None if not completed.

    Should stay ~0; a growing p99 means the load generator itself is saturated.
    """
    if not is_completed(r):
        return None
    return _ms(r.send_ns - r.schedule_ns)


def encoder_ms(r: RequestRecord) -> float | None:
    """Engine-side encoder time ``(encoder_done_ns - a_i)`` in ms (seq2seq engines only).

    None if the record has no ``encoder_done_ns`` or is not completed.
    """
    if not is_completed(r) or r.encoder_done_ns is None:
        return None
    return _ms(r.encoder_done_ns - r.send_ns)


# --------------------------------------------------------------------------------------
# Sample statistics
# --------------------------------------------------------------------------------------


def _pkey(p: float) -> str:
    return f"p{float(p):g}"


def percentiles(
    values: Iterable[float | None], ps: Sequence[float] = DEFAULT_PERCENTILES
) -> dict[str, float | int | None]:
    """Statistics of a latency sample: ``count``, ``mean``, ``min``, ``max`` and ``p<P>``.

    ``ps`` are in percent (``50`` -> key ``"p50"``, ``99.9`` -> ``"p99.9"``), computed with
    ``numpy.percentile(method="linear")`` (:data:`PERCENTILE_METHOD`).  ``None`` entries
    (undefined per-request values) are dropped, so per-request lists can be passed as is.
    An empty sample gives ``count == 0`` and every statistic ``None`` (rendered ``"n/a"``),
    never 0.
    """
    for p in ps:
        if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0 <= p <= 100:
            raise ConfigError("percentile", p, "numbers in [0, 100] (percent, e.g. 99 for p99)")
    sample = np.asarray([v for v in values if v is not None], dtype=float)
    out: dict[str, float | int | None] = {"count": int(sample.size)}
    if sample.size == 0:
        out.update(mean=None, min=None, max=None)
        out.update({_pkey(p): None for p in ps})
        return out
    out.update(mean=float(sample.mean()), min=float(sample.min()), max=float(sample.max()))
    qs = np.percentile(sample, list(ps), method="linear")
    out.update({_pkey(p): float(q) for p, q in zip(ps, qs)})
    return out


def fmt(value: float | int | None, spec: str = ".2f") -> str:
    """Format a metric value; ``None`` (undefined) becomes :data:`NA`, never ``"0"``."""
    return NA if value is None else format(value, spec)


# --------------------------------------------------------------------------------------
# SLO
# --------------------------------------------------------------------------------------

_SLO_KEYS = {"ttft": "ttft_ms", "tpot": "tpot_ms", "e2e": "e2e_ms"}
_SLO_ALLOWED_KEYS = "ttft, tpot, e2e (milliseconds; e.g. 'ttft=200,tpot=50,e2e=2000')"
_SLO_ALLOWED_VALUE = "a positive, finite number of milliseconds (or unset)"


@dataclass(frozen=True)
class SLO:
    """Service-level objectives in ms; an unset bound (``None``) is not checked.

    A request meets the SLO (:meth:`meets`) iff it completed and
    ``TTFT <= ttft_ms`` (schedule-relative TTFT), ``TPOT <= tpot_ms`` and
    ``E2E <= e2e_ms`` for every bound that is set.  A request with ``N_i = 1`` (or all
    tokens in one chunk) has no TPOT: the TPOT bound is then considered met, since there is
    no per-token time to violate it; its TTFT/E2E bounds still apply.  A failed request never
    meets the SLO.
    """

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and float(v) > 0
            if not ok:
                raise ConfigError(f"slo.{f.name}", v, _SLO_ALLOWED_VALUE)

    @classmethod
    def parse(cls, text: str) -> SLO:
        """Parse ``"ttft=200,tpot=50,e2e=2000"`` (ms; keys may carry ``_ms``; any subset).

        An empty string gives an SLO without bounds.  Unknown or repeated keys, a missing
        ``=`` and values that are not positive numbers raise :class:`ConfigError` naming the
        offending key and value.
        """
        kwargs: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            key, sep, raw = part.partition("=")
            key, raw = key.strip().lower(), raw.strip()
            if not sep:
                raise ConfigError("slo", part, _SLO_ALLOWED_KEYS, hint="write each bound as key=milliseconds")
            name = _SLO_KEYS.get(key.removesuffix("_ms"))
            if name is None:
                raise ConfigError("slo key", key, _SLO_ALLOWED_KEYS)
            if name in kwargs:
                raise ConfigError("slo key", key, _SLO_ALLOWED_KEYS, hint="each key may appear once")
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"slo.{key}", raw, _SLO_ALLOWED_VALUE) from None
            kwargs[name] = value
        return cls(**kwargs)  # __post_init__ rejects 0, negatives, inf and nan

    @property
    def is_empty(self) -> bool:
        """True when no bound is set (goodput and attainment are then undefined)."""
        return self.ttft_ms is None and self.tpot_ms is None and self.e2e_ms is None

    def to_dict(self) -> dict[str, float | None]:
        return {"slo_ttft_ms": self.ttft_ms, "slo_tpot_ms": self.tpot_ms, "slo_e2e_ms": self.e2e_ms}

    def meets(self, r: RequestRecord) -> bool:
        """True iff ``r`` completed and every set bound holds (see the class docstring)."""
        if not is_completed(r):
            return False
        if self.ttft_ms is not None:
            v = ttft_ms(r)
            if v is None or v > self.ttft_ms:
                return False
        if self.tpot_ms is not None:
            v = tpot_ms(r)
            if v is not None and v > self.tpot_ms:  # None (N_i = 1): no TPOT, bound met
                return False
        if self.e2e_ms is not None:
            v = e2e_ms(r)
            if v is None or v > self.e2e_ms:
                return False
        return True


# --------------------------------------------------------------------------------------
# Run summary
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """One run's metrics; :meth:`to_dict` gives the unit-suffixed keys of the saved report.

    Keys follow vLLM's ``benchmark_serving`` results where they mean the same
    (``completed``, ``request_throughput``, ``mean_ttft_ms``, ``p99_e2el_ms``,
    ``request_goodput``, ...).  Every latency field is ``None`` when its sample is empty.
    """

    scenario: str | None
    percentile_method: str
    completed: int
    failed: int
    warmup_excluded: int
    duration_s: float | None
    request_throughput: float | None  # req/s
    output_throughput: float | None  # tok/s
    total_input_tokens: int
    total_output_tokens: int
    tokens_per_chunk_mean: float | None
    mean_ttft_ms: float | None
    median_ttft_ms: float | None
    p90_ttft_ms: float | None
    p95_ttft_ms: float | None
    p99_ttft_ms: float | None
    mean_ttft_sent_ms: float | None
    median_ttft_sent_ms: float | None
    p90_ttft_sent_ms: float | None
    p95_ttft_sent_ms: float | None
    p99_ttft_sent_ms: float | None
    mean_tpot_ms: float | None
    median_tpot_ms: float | None
    p90_tpot_ms: float | None
    p95_tpot_ms: float | None
    p99_tpot_ms: float | None
    mean_itl_ms: float | None
    median_itl_ms: float | None
    p90_itl_ms: float | None
    p95_itl_ms: float | None
    p99_itl_ms: float | None
    mean_e2el_ms: float | None
    median_e2el_ms: float | None
    p90_e2el_ms: float | None
    p95_e2el_ms: float | None
    p99_e2el_ms: float | None
    median_dispatch_delay_ms: float | None
    p99_dispatch_delay_ms: float | None
    max_dispatch_delay_ms: float | None
    mean_encoder_ms: float | None
    median_encoder_ms: float | None
    p99_encoder_ms: float | None
    request_goodput: float | None  # req/s completing and meeting every SLO bound
    slo_attainment_pct: float | None
    slo_ttft_ms: float | None
    slo_tpot_ms: float | None
    slo_e2e_ms: float | None
    errors: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-ready dict (``errors`` copied)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["errors"] = dict(self.errors)
        return d


_STAT_PREFIX = {"mean": "mean", "p50": "median", "p90": "p90", "p95": "p95", "p99": "p99", "max": "max"}


def _stats(values: Iterable[float | None], name: str, keep: Sequence[str]) -> dict[str, float | None]:
    st = percentiles(values, DEFAULT_PERCENTILES)
    return {f"{_STAT_PREFIX[k]}_{name}_ms": st[k] for k in keep}  # type: ignore[misc]


def summarize(
    records: Iterable[RequestRecord], slo: SLO | None = None, scenario: str | None = None
) -> Summary:
    """Summarise one run (see the module docstring for every formula).

    * warm-up records: excluded from everything, counted in ``warmup_excluded``;
    * failed records (``ok=False``, or ``ok`` with no token -> ``"no tokens"``): counted in
      ``failed`` and ``errors`` (error string -> count), never a latency sample;
    * latency samples: ``ttft``/``ttft_sent``/``e2el`` one per completed request, ``tpot``
      only where defined (N_i >= 2), ``itl`` all chunk gaps pooled;
    * ``duration_s = (max(e_i) - min(s_i))`` over completed requests; throughputs divide by
      it and are None when it is undefined or not positive;
    * ``tokens_per_chunk_mean = sum(chunk_tokens) / number of chunks`` (pooled);
    * ``request_goodput = meeting / duration_s`` and
      ``slo_attainment_pct = 100 * meeting / (completed + failed)``; None without an SLO.
    """
    recs = list(records)
    measured = [r for r in recs if not r.warmup]
    done = [r for r in measured if is_completed(r)]
    errors: Counter[str] = Counter()
    for r in measured:
        reason = failure_reason(r)
        if reason is not None:
            errors[reason] += 1
    n_failed = len(measured) - len(done)

    duration_s: float | None = None
    if done:
        duration_s = (max(r.chunk_ns[-1] for r in done) - min(r.schedule_ns for r in done)) / 1e9
    total_out = sum(r.n_out for r in done)
    total_in = sum(r.n_in for r in done)
    rate_ok = duration_s is not None and duration_s > 0

    n_chunks = sum(len(r.chunk_tokens) for r in done)
    tokens_per_chunk = sum(sum(r.chunk_tokens) for r in done) / n_chunks if n_chunks else None

    itls: list[float] = []
    for r in done:
        itls.extend(itl_ms(r) or [])

    five = ("mean", "p50", "p90", "p95", "p99")
    lat: dict[str, float | None] = {}
    lat.update(_stats([ttft_ms(r) for r in done], "ttft", five))
    lat.update(_stats([ttft_sent_ms(r) for r in done], "ttft_sent", five))
    lat.update(_stats([tpot_ms(r) for r in done], "tpot", five))
    lat.update(_stats(itls, "itl", five))
    lat.update(_stats([e2e_ms(r) for r in done], "e2el", five))
    lat.update(_stats([dispatch_delay_ms(r) for r in done], "dispatch_delay", ("p50", "p99", "max")))
    lat.update(_stats([encoder_ms(r) for r in done], "encoder", ("mean", "p50", "p99")))

    goodput: float | None = None
    attainment: float | None = None
    if slo is not None and not slo.is_empty:
        meeting = sum(1 for r in done if slo.meets(r))
        if rate_ok:
            goodput = meeting / duration_s  # type: ignore[operator]
        if measured:
            attainment = 100.0 * meeting / len(measured)
    bounds = (slo or SLO()).to_dict()

    return Summary(
        scenario=scenario,
        percentile_method=PERCENTILE_METHOD,
        completed=len(done),
        failed=n_failed,
        warmup_excluded=len(recs) - len(measured),
        duration_s=duration_s,
        request_throughput=len(done) / duration_s if rate_ok else None,  # type: ignore[operator]
        output_throughput=total_out / duration_s if rate_ok else None,  # type: ignore[operator]
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        tokens_per_chunk_mean=tokens_per_chunk,
        request_goodput=goodput,
        slo_attainment_pct=attainment,
        errors=dict(errors),
        **bounds,
        **lat,
    )


# --------------------------------------------------------------------------------------
# MLPerf LoadGen early stopping
# --------------------------------------------------------------------------------------
#
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
