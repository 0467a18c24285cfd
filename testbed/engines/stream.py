"""Token streams: the one place engine-side token times are taken.

:class:`Stream` is one request decoded on its own (the engine's ``_decode`` generator);
:class:`BatchStream` drives the engine's :class:`~testbed.engines.step.StepBatch` for rows that
decode together, rows joining (:meth:`BatchStream.add`) and leaving (EOS, length, :meth:`cancel`)
between iterations.  Both stamp times with the engine's clock (:func:`testbed.clock.now_ns` unless
a test passes a scripted one): ``decode_start_ns`` when the engine starts on a row (the encoder
pass for seq2seq), ``encoder_done_ns`` when the engine reports its encoder finished, each token when
the step that chose it returned, ``end_ns`` when the row stopped.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING

from testbed.clock import Clock
from testbed.engines.detok import Detokenizer
from testbed.engines.types import ENCODER_DONE, GenerationRequest, Prepared, TokenEvent
from testbed.metrics.formulas import NO_TOKENS_ERROR
from testbed.metrics.records import RequestRecord

if TYPE_CHECKING:
    from testbed.engines.base import Engine


class Stream:
    """The token stream of one request: iterate it for :class:`TokenEvent`; then read the totals.

    This is the one place where engine-side token times are taken.  ``start_ns`` is when the
    stream was created (before tokenisation), ``decode_start_ns`` when the engine started decoding
    it (after tokenisation and any queueing: the start of the encoder pass for seq2seq),
    ``encoder_done_ns`` when the encoder finished (seq2seq engines that report it), each event's
    ``t_ns`` when its token id was chosen, ``end_ns`` when decoding stopped.  :meth:`close` stops
    decoding early (finish_reason ``cancelled``).
    """

    def __init__(
        self, engine: Engine, request: GenerationRequest, clock: Clock, prepared: Prepared | None = None,
        start_ns: int | None = None,
    ) -> None:
        self._clock = clock
        self.start_ns = clock() if start_ns is None else start_ns
        self.request = request
        self.request_id = request.request_id or uuid.uuid4().hex[:12]
        self.engine = engine
        self.decode_start_ns: int | None = None
        self.encoder_done_ns: int | None = None
        self.end_ns: int | None = None
        self.events: list[TokenEvent] = []
        self.finish_reason: str | None = None
        self.error: str | None = None
        self._detok = Detokenizer(engine.tokenizer, engine.decode)
        self.prepared = engine.prepare(request) if prepared is None else prepared
        self._gen: Generator[object, None, None] | None = None  # created on first iteration

    @property
    def n_in(self) -> int:
        return len(self.prepared.input_ids)

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.prepared.warnings

    @property
    def token_ids(self) -> list[int]:
        return [e.token_id for e in self.events]

    @property
    def text(self) -> str:
        return self.engine.decode(self.token_ids)

    def _accept(self, tid: int, t: int) -> TokenEvent:
        """Record token ``tid`` chosen at ``t`` (shared by :meth:`__iter__` and :class:`BatchStream`)."""
        ev = TokenEvent(tid, self._detok.add(tid), t)
        self.events.append(ev)
        if tid in self.engine.eos_token_ids:
            self.finish_reason = "eos"
        return ev

    def __iter__(self) -> Iterator[TokenEvent]:
        if self._gen is None:
            self.decode_start_ns = self._clock()
            self._gen = self.engine._decode(self.prepared)
        try:
            for item in self._gen:
                t = self._clock()
                if item is ENCODER_DONE:
                    self.encoder_done_ns = t
                    continue
                yield self._accept(int(item), t)  # type: ignore[call-overload]
            if self.finish_reason is None:
                self.finish_reason = "length"
        except GeneratorExit:
            self.finish_reason = self.finish_reason or "cancelled"
            raise
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.finish_reason = "error"
            raise
        finally:
            self._gen.close()
            if self.end_ns is None:
                self.end_ns = self._clock()

    def close(self) -> None:
        """Stop decoding now (a consumer that goes away)."""
        if self._gen is not None:
            self._gen.close()
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
        if self.end_ns is None:
            self.end_ns = self._clock()

    def run(self) -> Stream:
        """Consume the whole stream; returns self for chaining."""
        for _ in self:
            pass
        return self

    def record(self, warmup: bool = False) -> RequestRecord:
        """The engine-side record: scheduled = sent = stream start; one chunk per token."""
        rec = RequestRecord(
            request_id=self.request_id, schedule_ns=self.start_ns, send_ns=self.start_ns,
            chunk_ns=[e.t_ns for e in self.events], chunk_tokens=[1] * len(self.events),
            done_ns=self.end_ns, n_in=self.n_in, n_out=len(self.events), warmup=warmup,
            decode_start_ns=self.decode_start_ns, encoder_done_ns=self.encoder_done_ns, output=self.text,
            finish_reason=self.finish_reason,
        )
        if self.warnings:
            rec.extra["warnings"] = list(self.warnings)
        if self.error is not None:
            rec.fail(self.error, self.end_ns)
        elif not self.events:
            rec.fail(NO_TOKENS_ERROR, self.end_ns)
        return rec


class BatchStream:
    """Rows decoded together through the engine's :class:`~testbed.engines.step.StepBatch`.

    Each row is a :class:`Stream` (built from its :class:`Prepared`, never started on its own), so
    a row's :meth:`Stream.record`, text and finish reason work as for a single request; a row is
    named by its index in :attr:`rows`.  :meth:`add` admits rows (the encoder pass runs there;
    rows may join while others decode when the engine's batch allows it), :meth:`advance` runs one
    iteration (the new rows' first tokens, then one step of every running row) and returns the
    ``(row, TokenEvent)`` pairs it produced.  A row finishes on EOS or at its ``max_new_tokens`` and
    leaves the batch at once; :meth:`cancel` drops a row (finish_reason ``cancelled``).  Iterating
    the object advances until no row is left (a static batch).
    """

    def __init__(self, engine: Engine, rows: Sequence[Stream], clock: Clock) -> None:
        self.engine = engine
        self._clock = clock
        self.batch = engine.open_batch()
        self.rows: list[Stream] = []
        self.live: set[int] = set()
        self.join_step: dict[int, int] = {}
        self.joined_with: dict[int, int] = {}  # rows decoding right after a row joined (itself included)
        self.steps = 0
        self.start_ns = clock()
        self.end_ns: int | None = None
        self._closed = False
        if rows:
            self.add(rows)

    @property
    def can_join(self) -> bool:
        return self.batch.join_running or not self.live

    @property
    def pending(self) -> bool:
        return self.batch.has_pending()

    @property
    def can_admit_now(self) -> bool:
        """May rows be admitted before the next iteration (a prefill in progress allows it only on
        engines that prefill in chunks, each admission its own group)?"""
        return self.can_join and (not self.pending or self.batch.chunked_prefill)

    def add(self, streams: Sequence[Stream]) -> list[int]:
        """Admit rows (their encoder pass runs now); returns their indices."""
        first = len(self.rows)
        idx = list(range(first, first + len(streams)))
        running = len(self.live)
        t0 = self._clock()
        for i, r in zip(idx, streams):
            r.decode_start_ns = t0
            self.rows.append(r)
            self.join_step[i] = self.steps
            self.joined_with[i] = running + len(streams)
        try:
            self.batch.admit({i: r.prepared for i, r in zip(idx, streams)})
        except Exception as exc:
            t = self._clock()
            for i in idx:
                self.rows[i].error = f"{type(exc).__name__}: {exc}"
                self.rows[i].finish_reason = "error"
                self.rows[i].end_ns = t
            raise
        t = self._clock()
        if self.batch.reports_encoder:
            for i in idx:
                self.rows[i].encoder_done_ns = t
        self.live.update(idx)
        return idx

    def advance(self, prefill_budget: int | None = None) -> list[tuple[int, TokenEvent]]:
        """One iteration: the pending rows' first tokens, then one step of every running row.

        ``prefill_budget`` (prompt tokens per iteration): engines with chunked prefill advance every
        prompt being prefilled by one chunk per iteration, so the running rows keep stepping and a
        short prompt admitted beside a long one gets its first token first."""
        events: list[tuple[int, TokenEvent]] = []
        try:
            if self.batch.has_pending():
                out = self.batch.prefill(prefill_budget)
                events += self._accept(out, self._clock())
            if self.batch.has_running():
                expect = [i for i in self.batch.slots if i in self.live and not self.batch.is_pending(i)]
                out = self.batch.step()
                t = self._clock()
                events += self._accept(out, t)
                for i in expect:  # a row the engine stopped without EOS (its own length limit)
                    if i not in out and i in self.live:
                        self._finish(i, "length", t)
            self.steps += 1
        except Exception as exc:
            t = self._clock()
            for i in list(self.live):
                self.rows[i].error = f"{type(exc).__name__}: {exc}"
                self._finish(i, "error", t)
            raise
        return events

    def _accept(self, out: dict[int, int], t: int) -> list[tuple[int, TokenEvent]]:
        events = []
        for i, tid in out.items():
            if i not in self.live:
                continue
            row = self.rows[i]
            events.append((i, row._accept(int(tid), t)))
            if row.finish_reason == "eos":
                self._finish(i, "eos", t)
            elif len(row.events) >= row.prepared.max_new_tokens:
                self._finish(i, "length", t)
        return events

    def _finish(self, i: int, reason: str, t: int) -> None:
        row = self.rows[i]
        if row.finish_reason is None or reason == "error":
            row.finish_reason = reason
        if row.end_ns is None:
            row.end_ns = t
        self.live.discard(i)
        self.batch.evict([i])

    def __iter__(self) -> Iterator[tuple[int, TokenEvent]]:
        try:
            while self.live:
                yield from self.advance()
        finally:
            self.close()

    def cancel(self, i: int) -> None:
        """The consumer of row ``i`` went away: stop decoding it now (its slot is free)."""
        if i in self.live:
            self._finish(i, "cancelled", self._clock())

    def close(self) -> None:
        t = self._clock()
        for i in list(self.live):
            self._finish(i, "cancelled", t)
        if not self._closed:
            self._closed = True
            self.batch.close()
        if self.end_ns is None:
            self.end_ns = t
