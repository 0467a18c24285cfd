"""Dynamic batching and admission control around one engine, on one worker thread.

An engine is single-threaded compute, so a :class:`Batcher` owns it on a dedicated worker
thread: the asyncio loop (HTTP server, or the in-process load generator) only *submits* jobs
and *receives* messages, and never waits for the model.  That keeps the loop free to accept,
validate and reject requests at once while a batch is decoding.

A job's life (messages go to the job's ``sink``, called on the worker thread):

* :meth:`Batcher.submit` (loop thread) admits it into a bounded queue, or raises
  :class:`Busy` at once when ``max_queue`` jobs are already waiting (the server answers 429
  with ``Retry-After``);
* the worker tokenises it (``engine.prepare``) between decoding steps: ``("error", 400, msg)``
  for bad input, else ``("admitted", n_in, warnings)``;
* batches form from the waiting jobs: when ``max_batch_size`` are waiting, or when the oldest
  has waited ``max_wait_ms``; a job past its deadline is dropped with ``("error", 504, msg)``;
* while the batch decodes: ``("token", token_id, text, t_ns)`` per token (``t_ns`` from the
  engine-side :class:`~testbed.engines.base.BatchStream`), then ``("done", finish_reason, timing)``;
  a job whose consumer went away (:meth:`Job.cancel`) is dropped from the batch, and decoding
  stops once no row is left (the slot is free again);
* an engine failure ends every unfinished job of the batch with ``("error", 500, msg)``.

All times are :func:`testbed.clock.now_ns` (``perf_counter_ns``; CLOCK_MONOTONIC on Linux, so
comparable between processes of one machine, which is what the calibration timings rely on).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from testbed.clock import now_ns
from testbed.engines.base import BatchStream, Engine, GenerationRequest
from testbed.errors import ConfigError, InputError

Message = tuple[Any, ...]
Sink = Callable[[Message], None]


@dataclass(frozen=True)
class BatchConfig:
    """The batching and admission knobs of a serving configuration.

    ``max_batch_size``: requests decoded together; ``max_wait_ms``: how long the oldest waiting
    request may wait for a batch to fill; ``max_queue``: requests waiting (admitted, not yet
    decoding) beyond which new ones are refused at once; ``timeout_s``: the per-request deadline
    from arrival to the last token; ``retry_after_s``: the ``Retry-After`` a refusal carries.
    """

    max_batch_size: int = 1
    max_wait_ms: float = 2.0
    max_queue: int = 64
    timeout_s: float = 60.0
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.max_batch_size, int) or not 1 <= self.max_batch_size <= 1024:
            raise ConfigError("max_batch_size", self.max_batch_size, "an integer in [1, 1024]")
        if not isinstance(self.max_wait_ms, (int, float)) or not 0 <= self.max_wait_ms <= 10_000:
            raise ConfigError("max_wait_ms", self.max_wait_ms, "a number of milliseconds in [0, 10000]")
        if not isinstance(self.max_queue, int) or not 1 <= self.max_queue <= 1_000_000:
            raise ConfigError("max_queue", self.max_queue, "an integer in [1, 1000000]")
        if not isinstance(self.timeout_s, (int, float)) or not 0 < self.timeout_s <= 86_400:
            raise ConfigError("timeout_s", self.timeout_s, "a number of seconds in (0, 86400]")
        if not isinstance(self.retry_after_s, int) or not 1 <= self.retry_after_s <= 3600:
            raise ConfigError("retry_after_s", self.retry_after_s, "an integer number of seconds in [1, 3600]")

    def label(self) -> str:
        return f"batch<={self.max_batch_size}/wait{self.max_wait_ms:g}ms/queue{self.max_queue}"


class LoopMailbox:
    """Thread-safe, coalescing delivery of worker messages into an asyncio loop.

    ``post(put, msg)`` may be called from any thread; the loop is woken once per burst (one
    ``call_soon_threadsafe`` however many tokens a decoding step produced), then each message
    goes to its ``put`` (an ``asyncio.Queue.put_nowait``) in order.
    """

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self._pending: deque[tuple[Callable[[Message], None], Message]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, put: Callable[[Message], None], msg: Message) -> None:
        with self._lock:
            self._pending.append((put, msg))
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._drain)

    def sink(self, put: Callable[[Message], None]) -> Sink:
        return lambda msg: self.post(put, msg)

    def _drain(self) -> None:
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
            self._scheduled = False
        for put, msg in items:
            put(msg)


class Busy(Exception):
    """The admission queue is full (or the batcher is stopping): refuse the request now."""

    def __init__(self, message: str, retry_after_s: int, status: int = 429) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.status = status


_ids = itertools.count(1)


@dataclass(eq=False)
class Job:
    request: GenerationRequest
    sink: Sink
    arrival_ns: int
    deadline_ns: int
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: bool = False
    finished: bool = False  # a final message (done / error) was sent

    def cancel(self) -> None:
        """The consumer went away (client disconnect): stop generating for this job."""
        self.cancelled = True


@dataclass
class _Waiting:
    job: Job
    prepared: Any


class Batcher:
    """Owns ``engine`` on one worker thread; see the module docstring for the protocol."""

    def __init__(self, engine: Engine, config: BatchConfig | None = None) -> None:
        self.engine = engine
        self.config = config or BatchConfig()
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0  # admitted, not yet decoding (inbox + ready)
        self._running = 0  # rows of the batch being decoded
        self._stopping = False
        self.batches = 0
        self.batch_rows = 0
        self.cancelled = 0
        self.expired = 0
        self._thread = threading.Thread(target=self._run, name=f"batcher-{engine.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ loop side
    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    def submit(self, request: GenerationRequest, sink: Sink, arrival_ns: int | None = None,
               timeout_s: float | None = None) -> Job:
        """Admit one request or raise :class:`Busy` at once (never blocks)."""
        t = now_ns() if arrival_ns is None else arrival_ns
        timeout = self.config.timeout_s if timeout_s is None else timeout_s
        job = Job(request, sink, t, t + int(timeout * 1e9))
        with self._lock:
            if self._stopping:
                raise Busy("server is shutting down", self.config.retry_after_s, status=503)
            if self._waiting >= self.config.max_queue:
                raise Busy(
                    f"server busy: {self._waiting} requests already waiting (max_queue={self.config.max_queue}); "
                    f"retry after {self.config.retry_after_s} s", self.config.retry_after_s)
            self._waiting += 1
        self._inbox.put(job)
        return job

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
        self._inbox.put(None)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker side
    def _left_waiting(self, n: int = 1) -> None:
        with self._lock:
            self._waiting -= n

    def _final(self, job: Job, msg: Message) -> None:
        if not job.finished:
            job.finished = True
            job.sink(msg)

    def _intake(self, ready: deque[_Waiting], block: bool, timeout: float | None) -> bool:
        """Move jobs from the inbox to ``ready``, tokenising each; False when told to stop."""
        try:
            job = self._inbox.get(block=block, timeout=timeout) if block else self._inbox.get_nowait()
        except queue.Empty:
            return True
        while True:
            if job is None:
                return False
            self._prepare(job, ready)
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return True

    def _prepare(self, job: Job, ready: deque[_Waiting]) -> None:
        if job.cancelled:
            self._left_waiting()
            self.cancelled += 1
            job.finished = True
            return
        try:
            prepared = self.engine.prepare(job.request)
        except InputError as exc:
            self._left_waiting()
            self._final(job, ("error", 400, str(exc)))
            return
        except Exception as exc:  # a tokenizer failure is the server's, not the client's
            self._left_waiting()
            self._final(job, ("error", 500, f"{type(exc).__name__}: {exc}"))
            return
        job.sink(("admitted", len(prepared.input_ids), prepared.warnings))
        ready.append(_Waiting(job, prepared))

    def _take_batch(self, ready: deque[_Waiting]) -> list[_Waiting]:
        batch: list[_Waiting] = []
        t = now_ns()
        while ready and len(batch) < self.config.max_batch_size:
            w = ready.popleft()
            self._left_waiting()
            if w.job.cancelled:
                self.cancelled += 1
                w.job.finished = True
                continue
            if t > w.job.deadline_ns:
                self.expired += 1
                waited = (t - w.job.arrival_ns) / 1e9
                self._final(w.job, ("error", 504, f"deadline exceeded: waited {waited:.2f} s in the queue "
                                                  f"(per-request deadline {self.config.timeout_s:g} s)"))
                continue
            batch.append(w)
        return batch

    def _run(self) -> None:
        ready: deque[_Waiting] = deque()
        wait_ns = int(self.config.max_wait_ms * 1e6)
        while True:
            if not ready:
                if not self._intake(ready, block=True, timeout=None):
                    break
                continue
            # a batch is due when full, or when the oldest waiting job has waited max_wait
            due = ready[0].job.arrival_ns + wait_ns
            now = now_ns()
            if len(ready) < self.config.max_batch_size and now < due:
                if not self._intake(ready, block=True, timeout=(due - now) / 1e9):
                    break
                continue
            batch = self._take_batch(ready)
            if batch and not self._decode(batch, ready):
                break
        self._shutdown(ready)

    def _shutdown(self, ready: deque[_Waiting]) -> None:
        while ready:
            w = ready.popleft()
            self._left_waiting()
            self._final(w.job, ("error", 503, "server is shutting down"))
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._left_waiting()
                self._final(job, ("error", 503, "server is shutting down"))

    def _decode(self, batch: list[_Waiting], ready: deque[_Waiting]) -> bool:
        """Decode one batch to the end, taking in new jobs between tokens; False when told to stop."""
        jobs = [w.job for w in batch]
        bs: BatchStream = self.engine.stream_batch([w.prepared for w in batch], [j.arrival_ns for j in jobs])
        n = len(jobs)
        with self._lock:
            self._running = n
        self.batches += 1
        self.batch_rows += n
        keep_going = True
        try:
            for i, ev in bs:
                job = jobs[i]
                job.sink(("token", ev.token_id, ev.text, ev.t_ns))
                if i not in bs.live:
                    self._done(job, bs, i, n)
                # between tokens: drop rows whose consumer left or whose deadline passed ...
                t = ev.t_ns
                for k, other in enumerate(jobs):
                    if k in bs.live and (other.cancelled or t > other.deadline_ns):
                        self._drop(other, bs, k, t)
                # ... and take in (tokenise) newly arrived jobs, so bad input is refused promptly
                if keep_going and not self._intake(ready, block=False, timeout=None):
                    keep_going = False
                    bs.close()
                    break
                with self._lock:
                    self._running = len(bs.live)
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}"
            for job in jobs:
                self._final(job, ("error", 500, f"generation failed: {msg}"))
        finally:
            bs.close()
            for k, job in enumerate(jobs):
                if not job.finished:
                    if job.cancelled:
                        job.finished = True
                    else:
                        self._done(job, bs, k, n)
            with self._lock:
                self._running = 0
        return keep_going

    def _drop(self, job: Job, bs: BatchStream, k: int, t: int) -> None:
        bs.cancel(k)
        if job.cancelled:
            self.cancelled += 1
            job.finished = True  # nobody is listening
        else:
            self.expired += 1
            self._final(job, ("error", 504, f"deadline exceeded after {(t - job.arrival_ns) / 1e9:.2f} s "
                                            f"(per-request deadline {self.config.timeout_s:g} s)"))

    def _done(self, job: Job, bs: BatchStream, i: int, n: int) -> None:
        row = bs.rows[i]
        timing = {
            "arrival_ns": job.arrival_ns, "batch_start_ns": bs.start_ns, "decode_start_ns": row.decode_start_ns,
            "encoder_done_ns": row.encoder_done_ns,
            "token_ns": [e.t_ns for e in row.events], "end_ns": row.end_ns, "batch_size": n,
        }
        self._final(job, ("done", row.finish_reason or "length", timing, row.token_ids))
