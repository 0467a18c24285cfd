"""The latency waterfall of one answer: ordered, contiguous phases from the send to the last token.

Pure functions, no I/O and no clock: a waterfall is built from **marks**, each the timestamp (ns,
on one clock) at which a phase ends, in causal order after a start mark.  Phase ``k`` runs from
mark ``k-1`` to mark ``k``, so the phases tile ``[start, last mark]`` and their durations sum to the
end-to-end time exactly.  Every phase names its **source** (whose clock took the two ends: the
engine, the server, the client, the page).

Two builders feed :func:`build`:

* :func:`record_marks`: a :class:`~testbed.metrics.records.RequestRecord` of ``records.jsonl``
  (client-side times, and the server's ``return_timing`` in ``extra["server_timing"]`` when the
  client asked for it; on one machine the client's and the server's ``perf_counter_ns`` share
  CLOCK_MONOTONIC, so no alignment is needed);
* the demo page (``testbed.ui.timeline``), whose browser times are first moved onto the server's
  clock.

A mark earlier than the one before it (clock alignment error, at most the alignment's own
uncertainty) is moved up to it and the shift is reported in :attr:`Waterfall.notes`, so phases
never run backwards and the sum stays the end-to-end time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from testbed.errors import TestbedError
from testbed.metrics.records import RequestRecord

MS = 1e6

# phase names (one vocabulary for the page, the PNG and the tests)
DISPATCH = "dispatch delay (client)"
SEND = "send (client -> server)"
INTAKE = "intake + tokenisation"
QUEUE = "queue wait"
QUEUE_TOK = "queue wait + tokenisation"
TOKENISE = "tokenisation"
ENCODER = "encoder pass"
FIRST_STEP = "first decoding step"
LATER = "later tokens"
DETOK = "detokenisation + hand-off"
TRANSPORT = "transport (server -> client)"


@dataclass(frozen=True)
class Mark:
    """The end of one phase: ``phase`` ended at ``t_ns``, timed by ``source``."""

    phase: str
    t_ns: int
    source: str
    ticks_ns: tuple[int, ...] = ()  # events inside the phase (token times), drawn as ticks


@dataclass(frozen=True)
class Phase:
    name: str
    start_ms: float
    end_ms: float
    source: str
    ticks_ms: tuple[float, ...] = ()

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "start_ms": self.start_ms, "end_ms": self.end_ms, "source": self.source,
                "duration_ms": self.duration_ms, "ticks_ms": list(self.ticks_ms)}


@dataclass(frozen=True)
class Waterfall:
    label: str
    phases: tuple[Phase, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def total_ms(self) -> float:
        return self.phases[-1].end_ms if self.phases else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "total_ms": self.total_ms, "notes": list(self.notes),
                "phases": [p.to_dict() for p in self.phases]}


def build(label: str, start_ns: int, marks: Sequence[Mark], end_ns: int | None = None) -> Waterfall:
    """Phases between consecutive marks, in ms from ``start_ns``.

    A mark before its predecessor is moved up to it; with ``end_ns`` (the last mark's time, taken
    on the same clock as ``start_ns``), a mark after it is moved back to it.  Both are noted: they
    are the error of aligning two clocks, and the phases still sum to ``end - start``.
    """
    phases: list[Phase] = []
    notes: list[str] = []
    prev = start_ns
    for m in marks:
        t = m.t_ns
        if end_ns is not None and t > end_ns:
            notes.append(f"{m.phase}: its end ({m.source}) was {(t - end_ns) / MS:.3f} ms after the last mark; "
                         "moved back (clock alignment)")
            t = end_ns
        if t < prev:
            notes.append(f"{m.phase}: its end ({m.source}) was {(prev - t) / MS:.3f} ms before its start; "
                         "moved up (clock alignment)")
            t = prev
        ticks = tuple((min(max(x, prev), t) - start_ns) / MS for x in m.ticks_ns)
        phases.append(Phase(m.phase, (prev - start_ns) / MS, (t - start_ns) / MS, m.source, ticks))
        prev = t
    return Waterfall(label, tuple(phases), tuple(notes))


def engine_marks(start_ns: int | None, decode_start_ns: int | None, encoder_done_ns: int | None,
                 token_ns: Sequence[int], source: str = "engine", tokenise_phase: str = TOKENISE) -> list[Mark]:
    """The engine's own phases: tokenisation (when ``start_ns`` is the stream's start), encoder pass
    (seq2seq engines that report it), the first decoding step and the later tokens (ticks)."""
    out: list[Mark] = []
    if start_ns is not None and decode_start_ns is not None:
        out.append(Mark(tokenise_phase, decode_start_ns, source))
    if decode_start_ns is not None and encoder_done_ns is not None:
        out.append(Mark(ENCODER, encoder_done_ns, source))
    if token_ns:
        out.append(Mark(FIRST_STEP, token_ns[0], source))
        if len(token_ns) > 1:
            out.append(Mark(LATER, token_ns[-1], source, tuple(token_ns[1:])))
    return out


def server_marks(timing: dict[str, Any], source: str = "server") -> list[Mark]:
    """A server's ``return_timing`` (testbed serve: arrival, admitted, decode start, encoder end, token
    times, last write) as marks after its arrival; keys it lacks are skipped."""
    arrival = timing.get("arrival_ns")
    admitted = timing.get("admitted_ns")
    start = timing.get("decode_start_ns")
    out: list[Mark] = []
    if admitted is not None:
        out.append(Mark(INTAKE, int(admitted), source))
        if start is not None:
            out.append(Mark(QUEUE, int(start), source))
    elif arrival is not None and start is not None:
        out.append(Mark(QUEUE_TOK, int(start), source))
    toks = [int(t) for t in timing.get("token_ns") or ()]
    enc = timing.get("encoder_done_ns")
    out += engine_marks(None, start, None if enc is None else int(enc), toks, source="engine")
    if timing.get("last_write_ns") is not None and toks:
        out.append(Mark(DETOK, int(timing["last_write_ns"]), source))
    return out


def record_marks(rec: RequestRecord) -> tuple[int, list[Mark]]:
    """``(start_ns, marks)`` of a record: the scheduled send s_i to the receipt of the last chunk e_i.

    With ``extra["server_timing"]`` (a client that sent ``return_timing``): dispatch delay, send,
    the server's phases, then the transport back.  Without it (an in-process record: send = stream
    start, chunks = token times): dispatch delay, tokenisation (the stream start to the decode
    start), encoder, first step, later tokens.
    """
    if not rec.ok or not rec.chunk_ns:
        raise TestbedError(f"request {rec.request_id!r} has no waterfall: "
                           f"{rec.error or 'no tokens were received'}")
    marks: list[Mark] = []
    if rec.send_ns > rec.schedule_ns:
        marks.append(Mark(DISPATCH, rec.send_ns, "client"))
    timing = rec.extra.get("server_timing")
    last = rec.chunk_ns[-1]
    if isinstance(timing, dict) and timing.get("arrival_ns") is not None:
        marks.append(Mark(SEND, int(timing["arrival_ns"]), "client -> server"))
        marks += server_marks(timing)
        marks.append(Mark(TRANSPORT, last, "client"))
    else:
        marks += engine_marks(rec.send_ns, rec.decode_start_ns, rec.encoder_done_ns, rec.chunk_ns, source="record")
        if marks and marks[-1].t_ns != last:
            marks.append(Mark(TRANSPORT, last, "record"))
    return rec.schedule_ns, marks


def of_record(rec: RequestRecord, label: str | None = None) -> Waterfall:
    start, marks = record_marks(rec)
    return build(label or f"request {rec.request_id}", start, marks)


def median_record(records: Sequence[RequestRecord]) -> RequestRecord:
    """The completed, non-warm-up record whose E2E (e_i - s_i) is the median (the lower middle one
    of an even count), so the drawn request is one that really happened."""
    live = sorted((r for r in records if r.ok and r.chunk_ns and not r.warmup),
                  key=lambda r: r.chunk_ns[-1] - r.schedule_ns)
    if not live:
        raise TestbedError("no completed (non-warm-up) request in these records: nothing to draw")
    return live[(len(live) - 1) // 2]


def pick(records: Sequence[RequestRecord], request_id: str | None) -> RequestRecord:
    """The record ``request_id``, or the median one when it is None."""
    if request_id is None:
        return median_record(records)
    for r in records:
        if r.request_id == request_id:
            return r
    ids = [r.request_id for r in records]
    shown = ", ".join(ids[:8]) + (f", ... ({len(ids)} in all)" if len(ids) > 8 else "")
    raise TestbedError(f"--request {request_id!r}: no such request in these records; known ids: {shown}")
