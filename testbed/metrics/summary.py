"""One run's summary: :class:`Summary` and :func:`summarize`, pure functions over request records.

Contract: nothing here prints, reads the clock, touches files or the network.  Rendering lives
in :mod:`testbed.report`.  The parts live one concern per module, and are re-exported here so
``from testbed.metrics import summary as S`` keeps giving ``S.ttft_ms``, ``S.SLO``, ...:

* :mod:`testbed.metrics.formulas` -- per-request metrics (TTFT, TPOT, E2E, ITL, ...; METRICS.md);
* :mod:`testbed.metrics.stats` -- percentiles (``numpy.percentile(method="linear")``) and "n/a";
* :mod:`testbed.metrics.slo` -- the SLO bounds and the per-request check;
* :mod:`testbed.metrics.early_stopping` -- MLPerf LoadGen's early-stopping tail claims.

Rules that keep numbers honest (each pinned by ``tests/unit/test_metrics.py``):

* *Undefined is None, never 0.*  A per-request value that does not exist returns ``None``;
  an empty sample gives ``None`` statistics, rendered :data:`NA` (``"n/a"``).
* *A request is completed* iff ``ok`` is true, it has at least one token chunk and
  ``n_out > 0`` (:func:`is_completed`); anything else is failed, counted with its error and
  never a latency sample.
* *Warm-up records* are excluded from every number and only counted.

Per run, over completed non-warm-up records: duration ``T = max(e_i) - min(s_i)``,
request throughput ``completed / T``, output throughput ``sum(N_i) / T``, goodput
``(completed requests meeting every SLO) / T`` and SLO attainment
``100 * meeting / (completed + failed)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from testbed.metrics.early_stopping import (
    ESTIMATE_RULE,
    RULES,
    SERVER_RULE,
    binomial_cdf,
    early_stopping,
    min_passing_under,
    min_queries,
    server_early_stopping,
    server_min_queries,
    tail_claim,
)
from testbed.metrics.formulas import (
    NO_TOKENS_ERROR,
    dispatch_delay_ms,
    e2e_ms,
    encoder_ms,
    failure_reason,
    is_completed,
    itl_ms,
    queue_ms,
    timed_tokens,
    tpot_ms,
    ttft_ms,
    ttft_sent_ms,
)
from testbed.metrics.records import RequestRecord
from testbed.metrics.slo import SLO
from testbed.metrics.stats import DEFAULT_PERCENTILES, NA, PERCENTILE_METHOD, fmt, percentiles

__all__ = [
    "ESTIMATE_RULE",
    "NA",
    "PERCENTILE_METHOD",
    "DEFAULT_PERCENTILES",
    "RULES",
    "SERVER_RULE",
    "NO_TOKENS_ERROR",
    "SLO",
    "Summary",
    "binomial_cdf",
    "dispatch_delay_ms",
    "e2e_ms",
    "early_stopping",
    "encoder_ms",
    "queue_ms",
    "failure_reason",
    "fmt",
    "is_completed",
    "itl_ms",
    "min_passing_under",
    "min_queries",
    "percentiles",
    "server_early_stopping",
    "server_min_queries",
    "summarize",
    "tail_claim",
    "timed_tokens",
    "tpot_ms",
    "ttft_ms",
    "ttft_sent_ms",
]


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
    median_queue_ms: float | None
    p99_queue_ms: float | None
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
    lat.update(_stats([queue_ms(r) for r in done], "queue", ("p50", "p99")))

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

