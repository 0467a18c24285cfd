"""Batching and admission control around one engine, on one worker thread: the loop side.

An engine is single-threaded compute, so a :class:`Batcher` owns it on a dedicated worker thread
running the :class:`~testbed.serve.scheduler.Scheduler`: the asyncio loop (HTTP server, or the
in-process load generator) only *submits* jobs and *receives* typed messages
(:mod:`testbed.serve.messages`), and never waits for the model.  That keeps the loop free to
accept, validate and reject requests at once while a batch is decoding.

:meth:`Batcher.submit` admits a job into a bounded queue, or raises :class:`Busy` at once when
``max_queue`` jobs are already waiting (the server answers 429 with ``Retry-After``).  How jobs
are batched is :class:`BatchConfig` (``batching``: ``static`` or ``continuous``; see the
scheduler).  All times are :func:`testbed.clock.now_ns` (``perf_counter_ns``; CLOCK_MONOTONIC on
Linux, comparable between processes of one machine, which the calibration timings rely on).
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
from testbed.engines.base import Engine, GenerationRequest
from testbed.engines.step import Padding
from testbed.errors import ConfigError

BATCHING_MODES = ("static", "continuous")
Sink = Callable[[Any], None]


@dataclass(frozen=True)
class BatchConfig:
    """The batching and admission knobs of a serving configuration.

    ``batching``: ``static`` (a batch forms from the waiting requests and decodes to its end; new
    requests wait for the next batch) or ``continuous`` (between two decoding steps waiting requests
    join the running batch, and finished or cancelled rows leave at once).  ``max_batch_size``:
    rows decoded together; ``max_wait_ms``: how long the oldest waiting request may wait for an
    idle engine's batch to fill; ``max_queue``: requests waiting (admitted, not yet decoding)
    beyond which new ones are refused at once; ``max_queued_tokens``: the same bound counted in
    input tokens (one long prompt costs what it costs); ``timeout_s``: the per-request deadline from
    arrival to the last token; ``retry_after_s``: the ``Retry-After`` a refusal carries;
    ``prefill_chunk``: while rows are decoding, a new decoder-only prompt is prefilled this many
    tokens per step (None: at once), so one long prompt cannot stall the others; ``join_quantum``
    (continuous): while at least this many requests wait, they join a running batch in groups of at
    least this many (default max batch / 8).
    """

    max_batch_size: int = 1
    max_wait_ms: float = 2.0
    max_queue: int = 64
    timeout_s: float = 60.0
    retry_after_s: int = 1
    batching: str = "static"
    prefill_chunk: int | None = 256
    max_queued_tokens: int | None = None
    join_quantum: int = 0  # 0: max(1, max_batch_size // 8)

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
        if self.batching not in BATCHING_MODES:
            raise ConfigError("batching", self.batching, ", ".join(BATCHING_MODES))
        if not isinstance(self.join_quantum, int) or self.join_quantum < 0:
            raise ConfigError("join_quantum", self.join_quantum, "a non-negative integer (0: max batch / 8)")
        if self.join_quantum == 0:
            object.__setattr__(self, "join_quantum", max(1, self.max_batch_size // 8))
        if self.prefill_chunk is not None and (not isinstance(self.prefill_chunk, int) or self.prefill_chunk < 1):
            raise ConfigError("prefill_chunk", self.prefill_chunk, "a positive number of tokens, or none")
        if self.max_queued_tokens is not None and (
                not isinstance(self.max_queued_tokens, int) or self.max_queued_tokens < 1):
            raise ConfigError("max_queued_tokens", self.max_queued_tokens, "a positive number of tokens, or none")

    def label(self) -> str:
        return f"{self.batching} batch<={self.max_batch_size}/wait{self.max_wait_ms:g}ms/queue{self.max_queue}"

    def to_dict(self) -> dict[str, Any]:
        return {"batching": self.batching, "max_batch_size": self.max_batch_size, "max_wait_ms": self.max_wait_ms,
                "max_queue": self.max_queue, "max_queued_tokens": self.max_queued_tokens, "timeout_s": self.timeout_s,
                "prefill_chunk": self.prefill_chunk, "join_quantum": self.join_quantum}

    def check(self, engine: Engine) -> None:
        """Refuse a mode the engine cannot run (never silently downgraded)."""
        caps = engine.capabilities
        if self.batching == "continuous" and not caps.continuous:
            raise ConfigError("batching", "continuous", "static",
                              f"engine {engine.name}: {caps.join_refusal or 'rows cannot join a running batch'}")


class LoopMailbox:
    """Thread-safe, coalescing delivery of worker messages into an asyncio loop.

    ``post(put, msg)`` may be called from any thread; the loop is woken once per burst (one
    ``call_soon_threadsafe`` however many tokens a decoding step produced), then each message
    goes to its ``put`` (an ``asyncio.Queue.put_nowait``) in order.
    """

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self._pending: deque[tuple[Callable[[Any], None], Any]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, put: Callable[[Any], None], msg: Any) -> None:
        with self._lock:
            self._pending.append((put, msg))
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._drain)

    def sink(self, put: Callable[[Any], None]) -> Sink:
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


class Batcher:
    """Owns ``engine`` on one worker thread (the :class:`~testbed.serve.scheduler.Scheduler`)."""

    def __init__(self, engine: Engine, config: BatchConfig | None = None) -> None:
        from testbed.serve.scheduler import Scheduler

        self.engine = engine
        self.config = config or BatchConfig()
        self.config.check(engine)
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0  # admitted, not yet decoding (inbox + ready)
        self._stopping = False
        self.scheduler = Scheduler(self)
        self._thread = threading.Thread(target=self.scheduler.run, name=f"batcher-{engine.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ loop side
    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self.scheduler.running

    @property
    def padding(self) -> Padding:
        return self.scheduler.padding_total()

    def stats(self) -> dict[str, Any]:
        s = self.scheduler
        pad = self.padding
        return {"batching": self.config.batching, "batch_decoding": self.engine.capabilities.batching,
                "batches": s.batches, "batch_rows": s.batch_rows, "steps": s.steps, "joins": s.joins,
                "cancelled": s.cancelled, "expired": s.expired, "padded_fraction": pad.fraction}

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

    def left_waiting(self, n: int = 1) -> None:
        with self._lock:
            self._waiting -= n

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
        self._inbox.put(None)
        self._thread.join(timeout)
