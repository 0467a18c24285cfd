"""The scheduler: iteration-level batching on the batcher's worker thread.

It owns time and order; the engine owns tensors (:class:`~testbed.engines.step.StepBatch`, driven
through :class:`~testbed.engines.stream.BatchStream`, which takes every token timestamp).

A job's life (messages from :mod:`testbed.serve.messages` go to the job's ``sink`` on this thread):

* the worker tokenises it (``engine.prepare``) as soon as it arrives, between decoding steps:
  :class:`Failed` (400) for bad input, else :class:`Admitted`;
* **static** batching: when the engine is idle, a batch forms from the waiting jobs (when
  ``max_batch_size`` are waiting, or when the oldest has waited ``max_wait_ms``) and decodes to
  its end; jobs that arrive meanwhile wait for the next batch;
* **continuous** batching: the same first batch, and then, between any two decoding steps,
  waiting jobs join the running batch up to ``max_batch_size`` rows (their encoder pass or
  prefill runs, then they step with the others); while at least ``join_quantum`` jobs wait, they
  join in groups of at least that many (a join costs its own prefill and a copy of the padded
  caches), otherwise all that wait join at once;
* in both, a finished row leaves at once and one whose consumer went away (:meth:`Job.cancel`)
  or whose deadline passed is dropped between steps (its slot is free: in continuous mode a
  waiting job takes it at the next step); a job past its deadline before it started gets
  :class:`Failed` (504);
* :class:`Token` per token, then :class:`Done` with the request's timing (arrival, join step,
  the rows already decoding when it joined, encoder end, token times); an engine failure ends
  every unfinished row of the batch with :class:`Failed` (500).
"""

from __future__ import annotations

import queue
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from testbed.clock import now_ns
from testbed.engines.step import Padding
from testbed.engines.stream import BatchStream, Stream
from testbed.errors import InputError
from testbed.serve.messages import Admitted, Done, Failed, Token

if TYPE_CHECKING:
    from testbed.engines.base import Prepared
    from testbed.serve.batcher import Batcher, Job


@dataclass
class _Waiting:
    job: Job
    prepared: Prepared


class Scheduler:
    def __init__(self, batcher: Batcher) -> None:
        self.b = batcher
        self.engine = batcher.engine
        self.config = batcher.config
        self.continuous = self.config.batching == "continuous"
        self.ready: deque[_Waiting] = deque()
        self.bs: BatchStream | None = None
        self.jobs: dict[int, Job] = {}  # row of the current BatchStream -> its job
        self.running = 0
        self.batches = 0
        self.batch_rows = 0
        self.steps = 0
        self.joins = 0  # rows that joined a batch already decoding
        self.cancelled = 0
        self.expired = 0
        self.queued_tokens = 0  # input tokens of the jobs waiting in ``ready``
        self.refused_tokens = 0  # jobs refused by max_queued_tokens
        self._padding = Padding()  # of finished batches

    def padding_total(self) -> Padding:
        p = Padding(self._padding.total, self._padding.padded)
        bs = self.bs
        if bs is not None:
            p.add(bs.batch.padding.total, bs.batch.padding.padded)
        return p

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        wait_ns = int(self.config.max_wait_ms * 1e6)
        while True:
            if self.bs is None:
                if not self.ready:
                    if not self._intake(block=True, timeout=None):
                        break
                    continue
                # an idle engine starts a batch when it is full, or when the oldest job has waited max_wait
                due = self.ready[0].job.arrival_ns + wait_ns
                now = now_ns()
                if len(self.ready) < self.config.max_batch_size and now < due:
                    if not self._intake(block=True, timeout=(due - now) / 1e9):
                        break
                    continue
                if not self._start():
                    continue
            elif not self._intake(block=False, timeout=None):
                break
            elif self.continuous:
                self._join()
            self._iterate()
        self._shutdown()

    def _intake(self, block: bool, timeout: float | None) -> bool:
        """Move jobs from the inbox to ``ready``, tokenising each; False when told to stop."""
        inbox = self.b._inbox
        try:
            job = inbox.get(block=block, timeout=timeout) if block else inbox.get_nowait()
        except queue.Empty:
            return True
        while True:
            if job is None:
                return False
            self._prepare(job)
            try:
                job = inbox.get_nowait()
            except queue.Empty:
                return True

    def _prepare(self, job: Job) -> None:
        if job.cancelled:
            self.b.left_waiting()
            self.cancelled += 1
            job.finished = True
            return
        try:
            prepared = self.engine.prepare(job.request)
        except InputError as exc:
            self.b.left_waiting()
            self._final(job, Failed(400, str(exc)))
            return
        except Exception as exc:  # a tokenizer failure is the server's, not the client's
            self.b.left_waiting()
            self._final(job, Failed(500, f"{type(exc).__name__}: {exc}"))
            return
        n_in = len(prepared.input_ids)
        cap = self.config.max_queued_tokens
        if cap is not None and self.queued_tokens + n_in > cap:
            self.b.left_waiting()
            self.refused_tokens += 1
            self._final(job, Failed(429, f"server busy: {self.queued_tokens} input tokens already waiting and this "
                                         f"request has {n_in} (max_queued_tokens={cap}); retry after "
                                         f"{self.config.retry_after_s} s"))
            return
        self.queued_tokens += n_in
        job.sink(Admitted(n_in, prepared.warnings))
        self.ready.append(_Waiting(job, prepared))

    def _take(self, n: int) -> list[_Waiting]:
        """Up to ``n`` waiting jobs that are still wanted and within their deadline."""
        out: list[_Waiting] = []
        t = now_ns()
        while self.ready and len(out) < n:
            w = self.ready.popleft()
            self.b.left_waiting()
            self.queued_tokens -= len(w.prepared.input_ids)
            if w.job.cancelled:
                self.cancelled += 1
                w.job.finished = True
                continue
            if t > w.job.deadline_ns:
                self.expired += 1
                waited = (t - w.job.arrival_ns) / 1e9
                self._final(w.job, Failed(504, f"deadline exceeded: waited {waited:.2f} s in the queue "
                                               f"(per-request deadline {self.config.timeout_s:g} s)"))
                continue
            out.append(w)
        return out

    def _streams(self, ws: list[_Waiting]) -> list[Stream]:
        e = self.engine
        return [Stream(e, w.prepared.request, e.clock, prepared=w.prepared, start_ns=w.job.arrival_ns) for w in ws]

    def _start(self) -> bool:
        ws = self._take(self.config.max_batch_size)
        if not ws:
            return False
        bs = BatchStream(self.engine, [], self.engine.clock)
        self.bs = bs
        self.jobs = {}
        self.batches += 1
        return self._add(ws)

    def _join(self) -> None:
        bs = self.bs
        assert bs is not None
        free = self.config.max_batch_size - len(bs.live)
        if free <= 0 or not self.ready or not bs.can_admit_now:
            return
        # joining costs a prefill of its own and a copy of the padded caches: while more requests wait
        # than the join quantum, join in groups of at least that many (all that wait join at once otherwise)
        quantum = self.config.join_quantum
        if len(self.ready) >= quantum and free < quantum:
            return
        ws = self._take(free)
        if ws:
            self.joins += len(ws)
            self._add(ws)

    def _add(self, ws: list[_Waiting]) -> bool:
        bs = self.bs
        assert bs is not None
        try:
            rows = bs.add(self._streams(ws))
        except Exception as exc:
            for w in ws:
                self._final(w.job, Failed(500, f"generation failed: {type(exc).__name__}: {exc}"))
            if not bs.live:
                self._end()
            return False
        for i, w in zip(rows, ws):
            self.jobs[i] = w.job
        self.batch_rows += len(ws)
        self.running = len(bs.live)
        return True

    def _iterate(self) -> None:
        bs = self.bs
        assert bs is not None
        try:
            # chunks only where something can overtake: continuous batching (static batches admit nothing new)
            events = bs.advance(self.config.prefill_chunk if self.continuous else None)
        except Exception as exc:
            msg = f"generation failed: {type(exc).__name__}: {exc}"
            for i, job in self.jobs.items():
                if not job.finished and bs.rows[i].finish_reason == "error":
                    self._final(job, Failed(500, msg))
            self._end()
            return
        self.steps += 1
        for i, ev in events:
            job = self.jobs[i]
            job.sink(Token(ev.token_id, ev.text, ev.t_ns))
        for i, job in self.jobs.items():
            if job.finished:
                continue
            if i not in bs.live:
                self._done(job, i)
            elif job.cancelled or now_ns() > job.deadline_ns:
                self._drop(job, i)
        self.running = len(bs.live)
        if not bs.live:
            self._end()

    def _end(self) -> None:
        bs = self.bs
        if bs is None:
            return
        bs.close()
        for i, job in self.jobs.items():
            if not job.finished:
                if job.cancelled:
                    job.finished = True
                else:
                    self._done(job, i)
        self._padding.add(bs.batch.padding.total, bs.batch.padding.padded)
        self.bs = None
        self.jobs = {}
        self.running = 0

    # ------------------------------------------------------------------ endings
    def _final(self, job: Job, msg: Failed | Done) -> None:
        if not job.finished:
            job.finished = True
            job.sink(msg)

    def _drop(self, job: Job, i: int) -> None:
        assert self.bs is not None
        t = now_ns()
        self.bs.cancel(i)
        if job.cancelled:
            self.cancelled += 1
            job.finished = True  # nobody is listening
        else:
            self.expired += 1
            self._final(job, Failed(504, f"deadline exceeded after {(t - job.arrival_ns) / 1e9:.2f} s "
                                         f"(per-request deadline {self.config.timeout_s:g} s)"))

    def _done(self, job: Job, i: int) -> None:
        bs = self.bs
        assert bs is not None
        row = bs.rows[i]
        timing: dict[str, Any] = {
            "arrival_ns": job.arrival_ns, "batch_start_ns": row.decode_start_ns,
            "decode_start_ns": row.decode_start_ns, "encoder_done_ns": row.encoder_done_ns,
            "token_ns": [e.t_ns for e in row.events], "end_ns": row.end_ns,
            "batch_size": bs.joined_with[i], "join_step": bs.join_step[i], "batching": self.config.batching,
        }
        self._final(job, Done(row.finish_reason or "length", timing, tuple(row.token_ids)))

    def _shutdown(self) -> None:
        if self.bs is not None:
            for job in self.jobs.values():
                self._final(job, Failed(503, "server is shutting down"))
            self.bs.close()
            self.bs = None
        while self.ready:
            w = self.ready.popleft()
            self.b.left_waiting()
            self.queued_tokens -= len(w.prepared.input_ids)
            self._final(w.job, Failed(503, "server is shutting down"))
        while True:
            try:
                left = self.b._inbox.get_nowait()
            except queue.Empty:
                break
            if left is not None:
                self.b.left_waiting()
                self._final(left, Failed(503, "server is shutting down"))
