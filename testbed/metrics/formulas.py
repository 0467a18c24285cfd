"""Per-request metrics: pure functions of one :class:`~testbed.metrics.records.RequestRecord`.

Contract: nothing here prints, reads the clock, touches files or the network; every function
maps a record (raw ``perf_counter_ns`` integers) to a number in ms, or ``None`` when the value
does not exist (never 0).  Formulas and symbols follow ``design/METRICS.md``:

================  =====================================  ===================================
metric            formula (per request i)                function
================  =====================================  ===================================
dispatch delay    ``a_i - s_i``                          :func:`dispatch_delay_ms`
TTFT              ``f_i - s_i`` (schedule-relative)      :func:`ttft_ms`
TTFT (sent)       ``f_i - a_i``                          :func:`ttft_sent_ms`
E2E latency       ``e_i - s_i``                          :func:`e2e_ms`
TPOT              ``(e_i - f_i) / (N_i - 1)``, N_i >= 2  :func:`tpot_ms`
ITL               ``t_ik - t_i(k-1)`` for every chunk k  :func:`itl_ms`
encoder time      ``encoder_done - decode_start`` (eng.) :func:`encoder_ms`
queue wait        ``decode_start - a_i`` (engine)        :func:`queue_ms`
================  =====================================  ===================================

with ``s_i = schedule_ns``, ``a_i = send_ns``, ``t_ik = chunk_ns[k]``, ``f_i = chunk_ns[0]``,
``e_i = chunk_ns[-1]`` (the last *token* chunk, never ``done_ns``) and ``N_i = n_out``.

*A request is completed* iff ``ok`` is true, it has at least one token chunk and ``n_out > 0``
(:func:`is_completed`).  Anything else is failed: it is counted with its error (``"no tokens"``
for an ``ok`` record that produced none) and yields no latency sample at all.
"""

from __future__ import annotations

from testbed.metrics.records import RequestRecord

__all__ = [
    "NO_TOKENS_ERROR",
    "dispatch_delay_ms",
    "e2e_ms",
    "encoder_ms",
    "queue_ms",
    "timed_tokens",
    "failure_reason",
    "is_completed",
    "itl_ms",
    "tpot_ms",
    "ttft_ms",
    "ttft_sent_ms",
]

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
    """Engine-side encoder pass ``(encoder_done_ns - decode_start_ns)`` in ms (seq2seq engines
    that report it; CTranslate2 does not).  Queueing and tokenisation are not in it (:func:`queue_ms`).

    None if the record lacks either timestamp or is not completed.
    """
    if not is_completed(r) or r.encoder_done_ns is None or r.decode_start_ns is None:
        return None
    return _ms(r.encoder_done_ns - r.decode_start_ns)


def queue_ms(r: RequestRecord) -> float | None:
    """Time from the send until the engine started decoding the request, ``decode_start_ns - a_i``
    in ms: tokenisation and, behind a batcher, the wait for a batch.  None without ``decode_start_ns``."""
    if not is_completed(r) or r.decode_start_ns is None:
        return None
    return _ms(r.decode_start_ns - r.send_ns)
