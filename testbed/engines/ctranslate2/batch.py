"""The CTranslate2 engine's :class:`~testbed.engines.step.StepBatch`: one real batch, streamed.

CTranslate2 decodes a batch inside one call (``Translator.translate_batch`` /
``Generator.generate_batch``) and cannot take a row into a running call, so this batch is
*static*: the rows admitted before a :meth:`~StepBatch.prefill` are decoded by one asynchronous
call (``beam_size=1``) on CTranslate2's worker thread; rows may join only when the call has ended
(:attr:`CT2Batch.join_running` is False; :attr:`CT2Batch.join_refusal` says why).

The call's per-token ``callback`` runs on CTranslate2's thread, once per live row per decoding
step, in step order; it queues the row's token and returns True for a row that must stop: evicted
(cancelled, finished, past its deadline) or at its own ``max_new_tokens`` (the call's length
limit is the largest of the rows').  CTranslate2 drops a stopped row before its next step.

Every :meth:`~StepBatch.prefill` / :meth:`~StepBatch.step` takes one of the call's decoding steps
off the queue: it returns when every row that step computes has reported (so the driver stamps
the tokens when their step reached this thread).  Seq2seq rows all start at step 0.  A
decoder-only call feeds the prompts' common length at once and then the longer prompts' remaining
tokens one step at a time, so a row with a longer prompt gives its first token ``len(prompt) -
min(len(prompt))`` steps later: it stays *pending* until then, and each ``prefill`` takes one step,
returning the tokens of the rows already decoding as well as the new rows' first tokens
(:meth:`CT2Batch.has_running` is False until every row has started, so the driver does not call
``step``, which must give every row a token).  The callback runs at most :data:`AHEAD` steps beyond the
steps taken: CTranslate2 computes the next step while this thread hands out the last one, and a
row that leaves is computed for a bounded number of steps.

:meth:`~StepBatch.evict` never blocks; :meth:`CT2Batch.close` (and a new call once the previous
call's rows all left) waits for CTranslate2's call to end: at most :data:`AHEAD` + 1 more steps,
since every callback then returns True.  No encoder boundary is reported (CTranslate2 does not
expose it).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from testbed.engines.step import StepBatch

if TYPE_CHECKING:
    from testbed.engines.base import Prepared
    from testbed.engines.ctranslate2.engine import CTranslate2Engine

JOIN_REFUSAL = ("CTranslate2 decodes a batch inside one translate_batch/generate_batch call and cannot add a row "
                "to a running call (use --batching static)")

AHEAD = 1
"""How many steps CTranslate2 may compute beyond the last step the consumer took."""

_DONE = object()


class _Call:
    """One asynchronous CTranslate2 call over ``slots`` (in that order), its callback and waiter."""

    def __init__(self, engine: CTranslate2Engine, slots: list[int], prepared: list[Prepared]) -> None:
        self.slots = slots
        self.limits = [p.max_new_tokens for p in prepared]
        sources = [engine._tokens(p) for p in prepared]
        shortest = min(len(t) for t in sources)
        # the step of each row's first token (decoder-only: the longer prompts' extra tokens come first)
        self.offsets = [0 if engine.seq2seq else len(t) - shortest for t in sources]
        self.counts = [0] * len(slots)  # tokens CTranslate2 computed per row (its thread writes them)
        self.stop = [False] * len(slots)  # the row left (set by the consumer, read by the callback)
        self.taken = 0  # steps the consumer has taken
        self.cond = threading.Condition()
        self.items: queue.Queue[Any] = queue.Queue()
        process = engine.model.translate_batch if engine.seq2seq else engine.model.generate_batch
        opts = engine._options(max(self.limits))
        # a forced target-language BOS (NLLB, mBART) goes in as a target prefix; its steps come back
        # through the callback too and are not generated tokens
        self.skip = len(engine.target_prefix or ()) if engine.seq2seq else 0
        if self.skip:
            opts["target_prefix"] = [engine.target_prefix] * len(sources)
        results = process(sources, asynchronous=True, beam_size=1, callback=self._callback, **opts)
        self.waiter = threading.Thread(target=self._wait, args=(results,), name="ct2-batch", daemon=True)
        self.waiter.start()

    def _callback(self, step: Any) -> bool:
        i, g = int(step.batch_id), int(step.step) - self.skip
        if g < 0:  # a target-prefix step
            return self.stop[i]
        if g > self.taken + AHEAD and not self.stop[i]:
            with self.cond:
                self.cond.wait_for(lambda: self.stop[i] or g <= self.taken + AHEAD)
        self.counts[i] += 1
        stop = self.stop[i] or self.counts[i] >= self.limits[i]
        # (row, step, token or None when it left, CTranslate2 ends the row here)
        self.items.put((i, g, None if self.stop[i] else int(step.token_id), stop or bool(step.is_last)))
        return stop

    def _wait(self, results: list[Any]) -> None:
        try:
            for r in results:
                r.result()
        except Exception as exc:  # raised again in the consumer's thread
            self.items.put(exc)
        self.items.put(_DONE)

    def took(self, steps: int) -> None:
        """The consumer has taken ``steps`` steps."""
        with self.cond:
            self.taken = steps
            self.cond.notify_all()

    def halt(self, i: int) -> None:
        """Row ``i`` left: its callback returns True at its next step (never waits for it)."""
        with self.cond:
            self.stop[i] = True
            self.cond.notify_all()

    def join(self) -> None:
        """Stop every row and wait for CTranslate2's call to end."""
        with self.cond:
            self.stop = [True] * len(self.slots)
            self.cond.notify_all()
        self.waiter.join()


class CT2Batch(StepBatch):
    reports_encoder = False
    join_running = False
    join_refusal = JOIN_REFUSAL

    def __init__(self, engine: CTranslate2Engine) -> None:
        super().__init__()
        self.e = engine
        self.waiting: list[int] = []  # admitted, no call yet
        self.starting: list[int] = []  # in the call, no token yet (decoder-only: prompt still fed)
        self.running: list[int] = []  # in the call, have tokens, not evicted
        self.call: _Call | None = None
        self.index: dict[int, int] = {}  # slot -> its row in the call
        self.step_no = 0  # the call's next step to take
        self.alive: set[int] = set()  # rows of the call CTranslate2 still decodes
        self.seen: list[int] = []  # per row of the call: the last step it reported
        self.later: deque[Any] = deque()  # items of a later step, read while taking an earlier one
        self.buffer: dict[int, deque[int]] = {}  # slot -> tokens received, not yet returned
        self.computed: dict[int, int] = {}  # slot -> tokens CTranslate2 computed for it (calls that ended)

    def has_pending(self) -> bool:
        return bool(self.waiting or self.starting)

    def has_running(self) -> bool:
        # while some rows of the call have no token yet, prefill() takes the steps (and returns the
        # decoding rows' tokens too): the driver expects a token from every row at step()
        return bool(self.running) and not self.starting

    def _admit(self, rows: dict[int, Prepared]) -> None:
        if self.starting:  # rows of a running call that have no token yet (the base checks the others)
            for s in rows:
                del self.prepared[s], self.generated[s]
            raise RuntimeError(f"this engine cannot add rows to a running batch: {self.join_refusal}")
        self.waiting += list(rows)

    def _prefill(self) -> dict[int, int]:
        if self.waiting:
            self._start()
        return self._take_step()

    def _step(self) -> dict[int, int]:
        return self._take_step()

    def _start(self) -> None:
        self._finish_call()
        slots, self.waiting = self.waiting, []
        self.call = _Call(self.e, slots, [self.prepared[s] for s in slots])
        self.index = {s: k for k, s in enumerate(slots)}
        self.step_no = 0
        self.alive = set(range(len(slots)))
        self.seen = [-1] * len(slots)
        self.later.clear()
        self.buffer = {s: deque() for s in slots}
        self.starting = list(slots)

    def _take_step(self) -> dict[int, int]:
        """One step of the call: the tokens of the rows it computed (blocks until they reported)."""
        call = self.call
        if call is None:
            return {}
        g = self.step_no
        while any(call.offsets[i] <= g and self.seen[i] < g for i in self.alive):
            item = self.later.popleft() if self.later else call.items.get()
            if item is _DONE:
                self.alive.clear()
                break
            if isinstance(item, Exception):
                self.alive.clear()
                raise item
            i, step, token, ends = item
            if step > g:  # CTranslate2 went on without a row we expected: that step is over
                self.later.appendleft(item)
                break
            self.seen[i] = step
            if ends:
                self.alive.discard(i)
            s = call.slots[i]
            if token is not None and s in self.buffer:
                self.buffer[s].append(self.e._hf_id(token))
        self.step_no = g + 1
        call.took(self.step_no)
        out: dict[int, int] = {}
        for s in self.running + self.starting:
            if self.buffer[s]:
                out[s] = self.buffer[s].popleft()
        self.running += [s for s in self.starting if s in out]
        self.starting = [s for s in self.starting if s not in out and self._may_come(s)]
        self.running = [s for s in self.running if self.buffer[s] or self._may_come(s)]
        return out

    def _may_come(self, s: int) -> bool:
        return self.index[s] in self.alive

    def _evict(self, slots: list[int]) -> None:
        gone = set(slots)
        self.waiting = [s for s in self.waiting if s not in gone]
        self.starting = [s for s in self.starting if s not in gone]
        self.running = [s for s in self.running if s not in gone]
        for s in gone:
            k = self.index.get(s)
            if k is not None and self.call is not None:
                self.call.halt(k)
            self.buffer.pop(s, None)

    def _finish_call(self) -> None:
        """Wait for the current call to end (every row stopped)."""
        if self.call is not None:
            self.call.join()
            self.computed.update(zip(self.call.slots, self.call.counts))
            self.call = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._finish_call()
