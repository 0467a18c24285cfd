"""Per-step figures of ``bench/engines.py``: a non-streamed call's TPOT, and TPOT split into overhead and compute.

* :func:`call_tpot_ms`: a call that returns all tokens at once has no token times, so its time per
  output token is measured by two calls on the same input: ``(t_full - t_first) / (N - 1)``, where
  ``t_first`` is the call for 1 new token and ``N`` the full call's tokens (the same ``N - 1``
  gaps as METRICS.md's TPOT; undefined for ``N < 2``).
* :func:`split_tpot`: the *overhead* of a step is the same configuration's TPOT on the model's
  skeleton (:mod:`testbed.skeleton`: same vocabulary and decoding path, almost no layer
  arithmetic); *compute* is TPOT minus it.
"""

from __future__ import annotations


def call_tpot_ms(full_ns: int | None, first_ns: int | None, n_tokens: int) -> float | None:
    """TPOT of a non-streamed call in ms: ``(full_ns - first_ns) / 1e6 / (n_tokens - 1)``; None if undefined."""
    if full_ns is None or first_ns is None or n_tokens < 2:
        return None
    return (full_ns - first_ns) / 1e6 / (n_tokens - 1)


def split_tpot(tpot_ms: float | None, overhead_ms: float | None) -> tuple[float | None, float | None]:
    """``(overhead, compute)`` of a TPOT, given the same configuration's TPOT on the skeleton.

    The overhead is capped at the TPOT (on a noisy machine the skeleton's step can come out slower
    than a small model's), so compute is never negative; a missing TPOT or overhead gives no compute.
    """
    if tpot_ms is None or overhead_ms is None:
        return overhead_ms, None
    over = min(overhead_ms, tpot_ms)
    return over, tpot_ms - over
