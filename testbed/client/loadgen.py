"""The load generator: MLPerf scenarios over a :class:`~testbed.client.targets.Target`, on asyncio.

When each request i is *scheduled* (``s_i``, METRICS.md):

* ``singlestream``: one at a time; ``s_i`` = the moment the previous one finished;
* ``concurrency``: N closed-loop users; each user's ``s_i`` = its previous request's end;
* ``offline``: the whole set at once: every ``s_i`` = the start of the run;
* ``server``: Poisson arrivals at ``rate`` req/s from a seeded generator
  (:func:`poisson_offsets_ns`): ``s_i = s_{i-1} + Exp(rate)``; no cap on outstanding requests.

Latency is measured from ``s_i``; the actual send ``a_i`` is taken by the target, so the
dispatch delay ``a_i - s_i`` shows when the generator itself falls behind.  For ``server`` the
arrivals are fired by a timer thread (``time.sleep`` to each ``s_i``; then the request is written
from that thread when the target can, else handed to the loop): an asyncio timer alone wakes up
to 1 ms late (epoll's millisecond timeout).
Warm-up requests run first, one at a time, flagged ``warmup`` and excluded by the summaries.

The client watches itself: an event-loop lag probe (:mod:`testbed.client.lag`) runs through the
measured part, and the client's CPU time is taken around warm-up and run; both come back on the
:class:`RunRecords` and feed the client-limited verdict (:mod:`testbed.metrics.saturation`).
With ``client_procs > 1`` the server scenario runs in several processes, each with its own loop
and an independent share of the Poisson stream (:mod:`testbed.client.multiproc`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from testbed.client.lag import LagProbe
from testbed.clock import now_ns
from testbed.datasets import Example
from testbed.errors import ConfigError
from testbed.metrics.records import RequestRecord

SCENARIOS = ("singlestream", "server", "offline", "concurrency")
Progress = Callable[[int], None]
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadSpec:
    """One load: scenario, size (``num_requests`` or ``duration_s``), ``rate`` / ``concurrency``, seed."""

    scenario: str = "singlestream"
    num_requests: int | None = None
    duration_s: float | None = None
    rate: float | None = None
    concurrency: int = 1
    warmup: int = 5
    seed: int = 0
    client_procs: int = 1  # server scenario: client processes sharing the Poisson stream (others: 1)

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ConfigError("scenario", self.scenario, ", ".join(SCENARIOS))
        if self.scenario == "server" and (self.rate is None or not self.rate > 0):
            raise ConfigError("rate", self.rate, "a positive number of requests per second",
                              "the server scenario needs --rate (or --find-peak)")
        if self.rate is not None and not 0 < self.rate <= 1e6:
            raise ConfigError("rate", self.rate, "a number of requests per second in (0, 1e6]")
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ConfigError("concurrency", self.concurrency, "a positive integer")
        if self.num_requests is not None and (not isinstance(self.num_requests, int) or self.num_requests < 1):
            raise ConfigError("num_requests", self.num_requests, "a positive integer")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ConfigError("duration", self.duration_s, "a positive number of seconds")
        if self.scenario == "offline" and self.num_requests is None and self.duration_s is not None:
            raise ConfigError("duration", self.duration_s, "unset for offline (it sends a fixed set at once)",
                              "use --num-requests")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError("warmup", self.warmup, "a non-negative integer")
        if not isinstance(self.client_procs, int) or isinstance(self.client_procs, bool) \
                or not 1 <= self.client_procs <= 64:
            raise ConfigError("client_procs", self.client_procs, "an integer in [1, 64]")

    def describe(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "num_requests": self.num_requests, "duration_s": self.duration_s,
                "rate": self.rate, "concurrency": self.concurrency, "warmup": self.warmup, "seed": self.seed,
                "client_procs": self.procs}

    @property
    def procs(self) -> int:
        """Client processes this spec runs in: ``client_procs`` for the server scenario, else 1."""
        return self.client_procs if self.scenario == "server" else 1


class RunRecords(list[RequestRecord]):
    """The records of one run (warm-up ones first), with what the client measured about itself:
    ``loop_lag_ns`` (the lag probe's samples), ``client_cpu_s`` (CPU seconds of the client
    process(es) over warm-up and run), ``client_procs``."""

    def __init__(self, records: Sequence[RequestRecord] = (), loop_lag_ns: Sequence[int] = (),
                 client_cpu_s: float | None = None, client_procs: int = 1) -> None:
        super().__init__(records)
        self.loop_lag_ns = list(loop_lag_ns)
        self.client_cpu_s = client_cpu_s
        self.client_procs = client_procs

    def __repr__(self) -> str:  # not thousands of records
        return f"RunRecords({len(self)} records, {len(self.loop_lag_ns)} lag samples, {self.client_procs} procs)"


def poisson_offsets_ns(rate: float, seed: int, n: int | None = None, duration_s: float | None = None) -> list[int]:
    """Arrival offsets (ns from the start) of a Poisson process at ``rate`` req/s.

    ``n`` arrivals, or every arrival before ``duration_s``; the same seed gives the same list.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    if n is not None:
        return [int(x) for x in np.cumsum(rng.exponential(1e9 / rate, n))]
    assert duration_s is not None
    out: list[int] = []
    t = 0.0
    limit = duration_s * 1e9
    while True:
        for g in rng.exponential(1e9 / rate, 1024):
            t += g
            if t > limit:
                return out
            out.append(int(t))


class _Ticker(threading.Thread):
    """At absolute ``perf_counter_ns`` times ``due[i]``: ``direct(i)`` on this thread when given and it
    returns True (the request went out from here), else ``fire(i)`` on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, due: Sequence[int], fire: Callable[[int], None],
                 direct: Callable[[int], bool] | None = None) -> None:
        super().__init__(name="loadgen-ticker", daemon=True)
        self.loop, self.due, self.fire, self.direct = loop, due, fire, direct
        self.stopped = False

    def run(self) -> None:
        for i, t in enumerate(self.due):
            while True:
                if self.stopped:
                    return
                wait = (t - now_ns()) / 1e9
                if wait <= 0:
                    break
                time.sleep(min(wait, 0.05))
            if self.direct is not None:
                try:
                    if self.direct(i):
                        continue
                except Exception:  # never lose an arrival: the loop's path sends it
                    log.exception("sending request %d from the timer thread failed", i)
            self.loop.call_soon_threadsafe(self.fire, i)


def new_record(examples: Sequence[Example], k: int, s: int, warm: bool = False) -> tuple[Example, RequestRecord]:
    """Request ``k`` of a run (example ``k mod len(examples)``), scheduled at ``s``."""
    ex = examples[k % len(examples)]
    rid = f"{'w' if warm else ''}{k}:{ex.id}"
    return ex, RequestRecord(request_id=rid, schedule_ns=s, send_ns=s, warmup=warm)


async def warm_up(target: Any, examples: Sequence[Example], ks: Iterable[int]) -> list[RequestRecord]:
    """Warm-up requests ``ks``, one at a time (flagged ``warmup``: run, then excluded)."""
    out = []
    for k in ks:
        ex, rec = new_record(examples, k, now_ns(), warm=True)
        await target.send(ex, rec)
        out.append(rec)
    return out


async def fire_schedule(target: Any, pairs: Sequence[tuple[Example, RequestRecord]],
                        progress: Callable[[], None] | None = None) -> None:
    """Send each ``(example, record)`` at its ``record.schedule_ns`` (absolute ``perf_counter_ns``).

    A timer thread sleeps to each time and sends the request itself when the target can
    (``target.send_from_thread``: the lean client on an idle connection, so ``a_i`` does not wait
    for a busy loop); else it hands the arrival to the loop (thread-safe), which starts it at once
    through ``target.send_nowait`` (no task) or as a task running ``target.send``.  No cap on
    outstanding requests.  Returns when every request has finished.
    """
    if not pairs:
        return
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    remaining = len(pairs)
    tasks: set[asyncio.Task[None]] = set()
    nowait = getattr(target, "send_nowait", None)  # a target that can start a request without a task
    from_thread = getattr(target, "send_from_thread", None)  # ... or from the timer thread itself

    def one_done() -> None:
        nonlocal remaining
        if progress:
            progress()
        remaining -= 1
        if remaining == 0 and not finished.done():
            finished.set_result(None)

    async def one(i: int) -> None:
        ex, rec = pairs[i]
        await target.send(ex, rec)
        one_done()

    def fire(i: int) -> None:
        if nowait is not None:
            ex, rec = pairs[i]
            try:
                if nowait(ex, rec, one_done):
                    return
            except Exception as exc:  # never leave a request unfinished (the run would not end)
                rec.fail(f"{type(exc).__name__}: {exc}", now_ns())
                one_done()
                return
        task = loop.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def direct(i: int) -> bool:
        ex, rec = pairs[i]
        return bool(from_thread(ex, rec, one_done))  # type: ignore[misc]

    ticker = _Ticker(loop, [rec.schedule_ns for _, rec in pairs], fire, direct if from_thread else None)
    switch = sys.getswitchinterval()
    # the ticker must get the GIL at once when its sleep ends, not after up to 5 ms
    sys.setswitchinterval(1e-4)
    try:
        ticker.start()
        await finished
    finally:
        ticker.stopped = True
        sys.setswitchinterval(switch)


async def run_load(target: Any, examples: Sequence[Example], spec: LoadSpec,
                   progress: Progress | None = None) -> RunRecords:
    """Run ``spec`` against a started ``target`` in this process; every record (warm-up ones first)."""
    cpu0 = time.process_time()
    if hasattr(target, "prebuild"):
        target.prebuild(examples)
    records = await warm_up(target, examples, range(spec.warmup))
    m = len(examples)
    n = spec.num_requests
    end_ns = now_ns() + int(spec.duration_s * 1e9) if spec.duration_s is not None else None
    if n is None and end_ns is None:
        n = m
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done)

    def more(k: int) -> bool:
        return (n is None or k < n) and (end_ns is None or now_ns() < end_ns)

    live: list[RequestRecord] = []
    probe = LagProbe(asyncio.get_running_loop()).start()
    try:
        if spec.scenario == "singlestream":
            k = 0
            while more(k):
                ex, rec = new_record(examples, k, now_ns())
                await target.send(ex, rec)
                live.append(rec)
                tick()
                k += 1
        elif spec.scenario == "concurrency":
            counter = iter(range(10**12))

            async def user() -> None:
                while True:
                    k = next(counter)
                    if not more(k):
                        return
                    ex, rec = new_record(examples, k, now_ns())
                    await target.send(ex, rec)
                    live.append(rec)
                    tick()

            await asyncio.gather(*(user() for _ in range(spec.concurrency)))
        elif spec.scenario == "offline":
            t0 = now_ns()
            pairs = [new_record(examples, k, t0) for k in range(n or m)]

            async def send_one(ex: Example, rec: RequestRecord) -> None:
                await target.send(ex, rec)
                tick()

            await asyncio.gather(*(send_one(ex, rec) for ex, rec in pairs))
            live = [rec for _, rec in pairs]
        else:  # server: Poisson arrivals fired by a timer thread
            assert spec.rate is not None
            offsets = poisson_offsets_ns(spec.rate, spec.seed, n=n, duration_s=None if n else spec.duration_s)
            t0 = now_ns() + 20_000_000  # 20 ms to start the ticker
            pairs = [new_record(examples, k, t0 + o) for k, o in enumerate(offsets)]
            await fire_schedule(target, pairs, tick)
            live = [rec for _, rec in pairs]
    finally:
        lag = probe.stop()
    return RunRecords(records + live, loop_lag_ns=lag, client_cpu_s=time.process_time() - cpu0)


def run(target: Any, examples: Sequence[Example], spec: LoadSpec, progress: Progress | None = None
        ) -> RunRecords:
    """Synchronous wrapper: start the target, run, close it (uvloop when installed).

    With ``spec.procs > 1`` the run goes to :func:`testbed.client.multiproc.run_procs`.
    """
    if spec.procs > 1:
        from testbed.client.multiproc import run_procs

        return run_procs(target, examples, spec, progress)

    async def main() -> RunRecords:
        await target.start()
        try:
            return await run_load(target, examples, spec, progress)
        finally:
            await target.close()

    return run_in_loop(main())


def run_in_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh event loop (uvloop when installed)."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)
