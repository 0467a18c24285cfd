"""The server scenario in several client processes: each its own event loop, its own share of
the Poisson stream, one common start, records merged.

Why: one Python process parses every streamed token of every request on one core; past a few
hundred requests per second its loop falls behind and the dispatch delay grows.  ``k`` processes
split the work.  How the stream is split keeps it the one the seed describes:

* the full schedule is drawn once, in the parent, exactly as a single process would draw it
  (:func:`testbed.client.loadgen.poisson_offsets_ns`: rate ``R``, seed), so request ``k`` keeps its
  scheduled offset and its example (``k mod len(examples)``) whatever the number of processes;
* each arrival is assigned to one process by an independent uniform draw (seeded by
  ``[seed, THINNING_STREAM]``): thinning a Poisson process of rate ``R`` by independent coin
  flips gives ``k`` independent Poisson processes of rate ``R / k``, so each process sees a
  Poisson stream and their union is the original one;
* every process starts its target and runs its warm-up share (warm-up request ``w`` goes to
  process ``w mod k``), reports ready, and receives one common start ``t0`` (``perf_counter_ns``
  is CLOCK_MONOTONIC on Linux: one clock for every process of the machine); ``s_i = t0 + offset_i``
  stays the reference of every latency;
* the records come back to the parent (pickled), warm-up ones first then by ``s_i``; the lag
  probes' samples are pooled and the processes' CPU times summed.

The target travels to each process unstarted (pickled): an HTTP target, not an in-process one.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from testbed.clock import now_ns
from testbed.datasets import Example
from testbed.errors import TestbedError
from testbed.metrics.records import RequestRecord

log = logging.getLogger(__name__)

#: Second seed word of the thinning draw (so it never reuses the schedule's random stream).
THINNING_STREAM = 0x7417
#: How long the processes may take to start, connect and warm up (s).
READY_TIMEOUT_S = 300.0
#: Margin between the last process reporting ready and the common start (ns).
START_MARGIN_NS = 50_000_000


def split_schedule(offsets: Sequence[int], procs: int, seed: int) -> list[list[tuple[int, int]]]:
    """Assign each arrival ``k`` (offset ``offsets[k]``) to one of ``procs`` processes, uniformly and
    independently (seeded); returns per process its ``(k, offset_ns)`` pairs in time order."""
    owner = np.random.default_rng([seed, THINNING_STREAM]).integers(0, procs, len(offsets))
    shares: list[list[tuple[int, int]]] = [[] for _ in range(procs)]
    for k, (o, j) in enumerate(zip(offsets, owner)):
        shares[int(j)].append((k, int(o)))
    return shares


def _child(j: int, target: Any, examples: Sequence[Example], share: list[tuple[int, int]], warm: list[int],
           conn: Any, counter: Any) -> None:
    """One client process: start, warm up, report ready, wait for ``t0``, fire its share, send records back."""
    from testbed.client.loadgen import run_in_loop

    try:
        recs, lag, cpu = run_in_loop(_child_main(target, examples, share, warm, conn, counter))
        conn.send(("done", recs, lag, cpu))
    except BaseException as exc:  # reported to the parent, which raises it
        conn.send(("error", f"client process {j}: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()


async def _child_main(target: Any, examples: Sequence[Example], share: list[tuple[int, int]], warm: list[int],
                      conn: Any, counter: Any) -> tuple[list[RequestRecord], list[int], float]:
    import asyncio

    from testbed.client.lag import LagProbe
    from testbed.client.loadgen import fire_schedule, new_record, warm_up

    await target.start()
    try:
        cpu0 = time.process_time()
        if hasattr(target, "prebuild"):
            target.prebuild(examples)
        warm_recs = await warm_up(target, examples, warm)
        loop = asyncio.get_running_loop()
        conn.send(("ready",))
        t0 = await loop.run_in_executor(None, conn.recv)  # the loop keeps running (idle connections)
        pairs = [new_record(examples, k, t0 + o) for k, o in share]

        def tick() -> None:
            with counter.get_lock():
                counter.value += 1

        probe = LagProbe(loop).start()
        try:
            await fire_schedule(target, pairs, tick)
        finally:
            lag = probe.stop()
        return warm_recs + [rec for _, rec in pairs], lag, time.process_time() - cpu0
    finally:
        await target.close()


def run_procs(target: Any, examples: Sequence[Example], spec: Any, progress: Any = None) -> Any:
    """Run the server scenario ``spec`` in ``spec.client_procs`` processes (see the module docstring)."""
    from testbed.client.loadgen import RunRecords, poisson_offsets_ns

    procs = spec.client_procs
    if spec.scenario != "server" or spec.rate is None:
        raise TestbedError(f"client_procs={procs}: several client processes split a Poisson stream; "
                           "use the server scenario (--scenario server --rate R)")
    n = spec.num_requests if spec.num_requests is not None else (None if spec.duration_s else len(examples))
    offsets = poisson_offsets_ns(spec.rate, spec.seed, n=n, duration_s=None if n else spec.duration_s)
    shares = split_schedule(offsets, procs, spec.seed)
    ctx = mp.get_context("spawn")  # no fork of a process that holds threads and an event loop
    counter = ctx.Value("q", 0)
    pipes, workers = [], []
    for j in range(procs):
        parent, child = ctx.Pipe()
        warm = list(range(j, spec.warmup, procs))
        p = ctx.Process(target=_child, args=(j, target, examples, shares[j], warm, child, counter),
                        name=f"testbed-client-{j}", daemon=True)
        p.start()
        child.close()
        pipes.append(parent)
        workers.append(p)
    try:
        for j, pipe in enumerate(pipes):  # barrier: every process started, connected, warmed up
            msg = _recv(pipe, workers[j], READY_TIMEOUT_S)
            if msg[0] != "ready":
                raise TestbedError(msg[1])
        t0 = now_ns() + START_MARGIN_NS
        for pipe in pipes:
            pipe.send(t0)
        results: list[Any] = [None] * procs
        while any(r is None for r in results):
            for j, pipe in enumerate(pipes):
                if results[j] is None and pipe.poll(0.05):
                    results[j] = pipe.recv()
                    if results[j][0] != "done":
                        raise TestbedError(results[j][1])
                elif results[j] is None and not workers[j].is_alive() and not pipe.poll():
                    raise TestbedError(f"client process {j} exited with code {workers[j].exitcode}")
            if progress:
                progress(counter.value)
    finally:
        for p in workers:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    warm_recs = [r for res in results for r in res[1] if r.warmup]
    live = sorted((r for res in results for r in res[1] if not r.warmup), key=lambda r: r.schedule_ns)
    lag = [x for res in results for x in res[2]]
    log.info("client processes: %d, requests per process: %s", procs, [len(s) for s in shares])
    return RunRecords(warm_recs + live, loop_lag_ns=lag, client_cpu_s=sum(res[3] for res in results),
                      client_procs=procs)


def _recv(pipe: Any, proc: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while not pipe.poll(0.1):
        if not proc.is_alive():
            raise TestbedError(f"client process {proc.name} exited with code {proc.exitcode} before it was ready")
        if time.monotonic() > deadline:
            raise TestbedError(f"client process {proc.name} was not ready within {timeout_s:g} s")
    return pipe.recv()
