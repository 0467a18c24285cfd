"""What each Locust worker sends, and how the master's records become one run (pure functions).

**Shares.**  The schedule is drawn once, by the process that starts the run, exactly as the
native client draws it (:func:`testbed.client.loadgen.poisson_offsets_ns`), and split between the
workers by :func:`testbed.client.multiproc.split_schedule` (independent seeded coin flips: each
worker's share is a Poisson stream of rate ``R / N``, their union is the requested one).  Request
``k`` keeps its example (``k mod len(examples)``), its id and its offset whatever ``N``.
``offline``: the whole set at offset 0, request ``k`` to worker ``k mod N``; ``concurrency``: the
closed-loop users split as evenly as possible, request ``k`` to worker ``k mod N``.  Warm-up
request ``w`` goes to worker ``w mod N``.

**Times.**  Each worker rebases its records on its own start ``t0`` (the moment it was told to
go, plus a margin), so the merged records share one time origin even when the workers run on
other machines; a latency is a difference within one record and does not depend on it.

**Lost requests.**  Records stream to the master while the run goes on.  A request of a worker
that died (Locust's heartbeat marks it missing) and whose record never arrived becomes a failed
record (:data:`LOST_ERROR`), so the run is never silently short.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from testbed.client.multiproc import split_schedule
from testbed.datasets import Example
from testbed.metrics.records import RequestRecord

LOST_ERROR = "lost: its Locust worker died"


def _req(k: int, examples: Sequence[Example], offset_ns: int, body: Any, warm: bool = False) -> dict[str, Any]:
    ex = examples[k % len(examples)]
    path, data, chat = body(ex)
    return {"k": k, "rid": f"{'w' if warm else ''}{k}:{ex.id}", "offset_ns": int(offset_ns), "path": path,
            "body": data.decode(), "chat": chat}


def worker_jobs(spec: Any, examples: Sequence[Example], workers: int, body: Any) -> list[dict[str, Any]]:
    """One job per worker: its warm-up requests and its share of ``spec`` (see the module docstring).

    ``body(example) -> (path, JSON bytes, chat?)`` builds a request (:meth:`HttpTarget.body`).
    """
    from testbed.client.loadgen import poisson_offsets_ns

    n = spec.num_requests if spec.num_requests is not None else (None if spec.duration_s else len(examples))
    if spec.scenario == "server":
        offsets = poisson_offsets_ns(spec.rate, spec.seed, n=n, duration_s=None if n else spec.duration_s)
        shares = split_schedule(offsets, workers, spec.seed)
    else:
        assert n is not None
        shares = [[(k, 0) for k in range(j, n, workers)] for j in range(workers)]
    users = [spec.concurrency // workers + (1 if j < spec.concurrency % workers else 0) for j in range(workers)]
    return [{"worker": j, "scenario": spec.scenario, "users": max(1, users[j]),
             "warm": [_req(w, examples, 0, body, warm=True) for w in range(j, spec.warmup, workers)],
             "requests": [_req(k, examples, o, body) for k, o in shares[j]]} for j in range(workers)]


def rebase(rec: RequestRecord, t0: int) -> RequestRecord:
    """``rec`` with every timestamp measured from ``t0`` (a worker's start)."""
    rec.schedule_ns -= t0
    rec.send_ns -= t0
    rec.chunk_ns = [t - t0 for t in rec.chunk_ns]
    if rec.done_ns is not None:
        rec.done_ns -= t0
    if rec.last_visible_ns is not None:
        rec.last_visible_ns -= t0
    return rec


def lost_records(job: dict[str, Any], received: set[str], at_ns: int) -> list[RequestRecord]:
    """Failed records for the requests of ``job`` whose record never reached the master."""
    out = []
    for r in job["requests"]:
        if r["rid"] not in received:
            rec = RequestRecord(request_id=r["rid"], schedule_ns=r["offset_ns"], send_ns=r["offset_ns"])
            rec.fail(LOST_ERROR, at_ns)
            rec.extra["worker"] = job["worker"]
            out.append(rec)
    return out


def merge(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    """Warm-up records first, then the measured ones by scheduled time (as the native client orders them)."""
    warm = [r for r in records if r.warmup]
    live = sorted((r for r in records if not r.warmup), key=lambda r: (r.schedule_ns, r.request_id))
    return warm + live


def _pct(vals: Sequence[float], q: float) -> float | None:
    if not vals:
        return None
    s = sorted(vals)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def worker_table(jobs: Sequence[dict[str, Any]], records: Sequence[RequestRecord],
                 states: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per worker: requests assigned, recorded, lost, its state, and its dispatch delay (p50 / p99 / max, ms)."""
    rows = []
    for job in jobs:
        j = job["worker"]
        mine = [r for r in records if not r.warmup and r.extra.get("worker") == j]
        sent = [(r.send_ns - r.schedule_ns) / 1e6 for r in mine if r.error != LOST_ERROR]
        st = states.get(j, {})
        rows.append({"worker": j, "node": st.get("node"), "state": st.get("state", "unknown"),
                     "assigned": len(job["requests"]), "recorded": len(sent),
                     "lost": sum(1 for r in mine if r.error == LOST_ERROR),
                     "median_dispatch_delay_ms": _pct(sent, 0.5), "p99_dispatch_delay_ms": _pct(sent, 0.99),
                     "max_dispatch_delay_ms": max(sent) if sent else None, "cpu_s": st.get("cpu_s")})
    return rows
