"""Is the load generator keeping up?  A run's client verdict, as pure functions.

METRICS.md: the dispatch delay ``a_i - s_i`` "should stay ~0; a growing p99 means the client is
saturated and the run is flagged".  Two signals, each against a limit (:class:`ClientLimits`):

* **dispatch delay** ``a_i - s_i`` -- for the ``server`` scenario only: elsewhere ``s_i`` is taken
  at the send itself (closed loop) or is one instant for the whole set (offline), so it says
  nothing about the client keeping up;
* **event-loop lag** -- how late the client's loop runs a callback handed to it
  (:mod:`testbed.client.lag`), in every scenario: a late loop also timestamps tokens late.

A run whose p99 of either passes its limit is **client-limited**: its latencies include the
client's own delay, so they are an upper bound on the server's, not its measure.  The verdict
is ``None`` (undecided) when there is no sample at all.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from testbed.errors import ConfigError
from testbed.metrics.summary import percentiles

#: Default limits: the issue's goal for the client (p99 dispatch delay below 1 ms).
DISPATCH_P99_LIMIT_MS = 1.0
LOOP_LAG_P99_LIMIT_MS = 1.0


@dataclass(frozen=True)
class ClientLimits:
    """p99 limits (ms) past which a run is flagged client-limited."""

    dispatch_p99_ms: float = DISPATCH_P99_LIMIT_MS
    loop_lag_p99_ms: float = LOOP_LAG_P99_LIMIT_MS

    def __post_init__(self) -> None:
        for name in ("dispatch_p99_ms", "loop_lag_p99_ms"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"client_limit.{name}", v, "a positive number of milliseconds",
                                  "e.g. --client-limit-ms 1")


def client_verdict(dispatch_ms: Sequence[float | None], loop_lag_ms: Sequence[float],
                   limits: ClientLimits | None = None, cpu_s: float | None = None, requests: int = 0,
                   procs: int = 1) -> dict[str, Any]:
    """The client verdict of one run (unit-suffixed keys for ``summary.json``).

    ``dispatch_ms``: per-request dispatch delays (pass ``[]`` outside the server scenario; ``None``
    entries are dropped); ``loop_lag_ms``: the lag probe's samples; ``cpu_s``: CPU seconds the
    client processes used over ``requests`` requests (warm-up included), for
    ``client_cpu_ms_per_request``.  ``client_limited`` is True when a p99 passes its limit, False
    when both p99s that exist are within them, None when neither sample exists.
    """
    lim = limits or ClientLimits()
    d = percentiles(dispatch_ms, (50, 99))
    lag = percentiles(loop_lag_ms, (50, 99))
    reasons: list[str] = []
    if d["p99"] is not None and d["p99"] > lim.dispatch_p99_ms:
        reasons.append(f"p99 dispatch delay {d['p99']:.3f} ms > {lim.dispatch_p99_ms:g} ms")
    if lag["p99"] is not None and lag["p99"] > lim.loop_lag_p99_ms:
        reasons.append(f"p99 event-loop lag {lag['p99']:.3f} ms > {lim.loop_lag_p99_ms:g} ms")
    decided = bool(d["count"] or lag["count"])
    return {
        "client_limited": bool(reasons) if decided else None,
        "client_limited_reasons": reasons,
        "client_limit_dispatch_p99_ms": lim.dispatch_p99_ms,
        "client_limit_loop_lag_p99_ms": lim.loop_lag_p99_ms,
        "loop_lag_samples": lag["count"],
        "median_loop_lag_ms": lag["p50"],
        "p99_loop_lag_ms": lag["p99"],
        "max_loop_lag_ms": lag["max"],
        "client_cpu_ms_per_request": cpu_s * 1e3 / requests if cpu_s is not None and requests > 0 else None,
        "client_procs": procs,
    }


def run_verdict(records: Sequence[Any], scenario: str | None, limits: ClientLimits | None = None) -> dict[str, Any]:
    """:func:`client_verdict` of a load run's records (a ``RunRecords``: its ``loop_lag_ns``,
    ``client_cpu_s`` and ``client_procs`` are read when present).  Dispatch delays count only in
    the server scenario (see the module docstring)."""
    from testbed.metrics.summary import dispatch_delay_ms

    dispatch = [dispatch_delay_ms(r) for r in records if not r.warmup] if scenario == "server" else []
    lag = [x / 1e6 for x in getattr(records, "loop_lag_ns", ())]
    return client_verdict(dispatch, lag, limits, cpu_s=getattr(records, "client_cpu_s", None),
                          requests=len(records), procs=getattr(records, "client_procs", 1))


def verdict_text(v: dict[str, Any]) -> str:
    """One line for a report: ``CLIENT-LIMITED: <reasons>`` / ``keeps up (...)`` / ``undecided``."""
    if v["client_limited"] is None:
        return "undecided (no dispatch or loop-lag sample)"
    if v["client_limited"]:
        return "CLIENT-LIMITED: " + "; ".join(v["client_limited_reasons"]) + " (latencies include the client's delay)"
    return (f"keeps up (p99 limits: dispatch {v['client_limit_dispatch_p99_ms']:g} ms, "
            f"loop lag {v['client_limit_loop_lag_p99_ms']:g} ms)")
