"""The locustfile of ``testbed bench --workers N``: run by ``locust -f`` as the master and as each worker.

Locust does the distribution: it starts the master and the workers, connects them, watches
their heartbeats, and carries testbed's messages between them (``register_message`` /
``send_message``).  testbed does the timing, as its native client does:

* the master (``--tb-job FILE``, written by :mod:`testbed.scale.locust_run`) waits for its
  workers, gives worker ``j`` its job (``tb_job``: warm-up and its share of the schedule,
  :func:`testbed.scale.jobs.worker_jobs`), waits until each has warmed up (``tb_ready``), then
  says go (``tb_go``), collects the records as they stream in (``tb_records``) and each
  worker's end (``tb_done``), and writes them;
* a worker fires its share open-loop: one greenlet sleeps to each scheduled time ``s_i`` and
  starts the request in a greenlet of its own (no cap on outstanding requests); each request is
  a streaming POST on geventhttpclient (Locust's FastHttpUser client), each SSE line timestamped
  (:func:`testbed.clock.now_ns`) when it is read and parsed by the native client's
  :class:`~testbed.client.sse.SseReader` into a :class:`~testbed.metrics.records.RequestRecord`:
  latency from ``s_i``, ``a_i - s_i`` the dispatch delay (including gevent's timer, which can
  wake up to 1 ms late).

A worker that dies is marked missing by Locust's heartbeat (about 3 s); the master stops waiting
for it, and the launcher records its unreported requests as lost.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

import gevent
from gevent.event import Event
from locust import FastHttpUser, User, constant, events, task
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner

from testbed.client.sse import SseReader, error_label
from testbed.clock import now_ns
from testbed.metrics.records import RequestRecord
from testbed.scale.jobs import rebase

log = logging.getLogger(__name__)
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
#: Between "go" and the first scheduled request (ns): every worker hears "go" before it.
START_MARGIN_NS = 200_000_000
FLUSH_S = 0.25


@events.init_command_line_parser.add_listener
def _args(parser: Any) -> None:
    parser.add_argument("--tb-job", default="", help="testbed: the job file (master only)")


class Idle(User):
    """Locust needs a user class; testbed's schedule runs in greenlets of its own, not in users."""

    wait_time = constant(3600)

    @task
    def idle(self) -> None:
        return None


class _Client(FastHttpUser):
    concurrency = 4096
    network_timeout = 600.0
    connection_timeout = 60.0

    @task
    def nothing(self) -> None:
        return None


# ---------------------------------------------------------------------- worker
def send(client: Any, req: dict[str, Any], rec: RequestRecord) -> None:
    """One streaming request: ``send_ns`` just before, each line timed as it is read (as the native client)."""
    reader = SseReader(rec, req["chat"])
    rec.send_ns = now_ns()
    try:
        resp = client.post(req["path"], data=req["body"].encode(), headers=HEADERS, stream=True)
        if resp.status_code != 200:
            rec.fail(error_label(resp.status_code), now_ns())
            return
        raw = resp._response  # geventhttpclient's response: lines as they arrive
        while True:
            line = raw.readline(b"\n")
            t = now_ns()
            if not line or reader.line(line, t):
                break
        reader.finish(now_ns())
    except Exception as exc:
        rec.fail(f"{type(exc).__name__}: {exc}", now_ns())


def _work(env: Any, job: dict[str, Any], go: Event, state: dict[str, Any]) -> None:
    runner = env.runner
    j = job["worker"]
    _Client.host = job["url"]
    client = _Client(env).client
    cpu0 = time.process_time()
    # Locust's own spawn message (its Idle user) blocks a worker for ~0.5 s while it re-parses
    # arguments: let it pass before the warm-up, so it cannot stall the schedule
    deadline = time.monotonic() + 30
    while runner.user_count < 1 and time.monotonic() < deadline:
        gevent.sleep(0.02)
    done: list[RequestRecord] = []
    for r in job["warm"]:
        rec = RequestRecord(request_id=r["rid"], schedule_ns=now_ns(), send_ns=0, warmup=True)
        send(client, r, rec)
        done.append(rec)
    runner.send_message("tb_ready", {"worker": j})
    go.wait()
    same_host = state.get("host") == socket.gethostname()
    t0 = state["t0"] if same_host else now_ns() + START_MARGIN_NS
    pending = list(done)  # the warm-up ones, rebased on t0 below
    sent = 0

    def finish(rec: RequestRecord) -> None:
        pending.append(rec)

    def flush() -> None:
        nonlocal sent
        batch = pending[:]
        del pending[: len(batch)]
        if batch:
            for rec in batch:
                rec.extra["worker"] = j
            runner.send_message("tb_records", {"worker": j, "records": [
                json.loads(rebase(rec, t0).to_json()) for rec in batch]})
            sent += len(batch)

    def flusher() -> None:
        while True:
            gevent.sleep(FLUSH_S)
            flush()

    def one(req: dict[str, Any], rec: RequestRecord) -> None:
        send(client, req, rec)
        finish(rec)

    fl = gevent.spawn(flusher)
    greenlets = []
    reqs = job["requests"]
    if job["scenario"] == "concurrency":
        queue = deque(reqs)

        def user() -> None:
            while queue:
                req = queue.popleft()
                rec = RequestRecord(request_id=req["rid"], schedule_ns=now_ns(), send_ns=0)
                one(req, rec)

        wait = (t0 - now_ns()) / 1e9
        if wait > 0:
            gevent.sleep(wait)
        greenlets = [gevent.spawn(user) for _ in range(job["users"])]
    else:  # server (Poisson offsets) and offline (every offset 0)
        for req in reqs:
            s = t0 + req["offset_ns"]
            wait = (s - now_ns()) / 1e9
            if wait > 0:
                gevent.sleep(wait)
            greenlets.append(gevent.spawn(one, req, RequestRecord(request_id=req["rid"], schedule_ns=s, send_ns=s)))
    gevent.joinall(greenlets)
    fl.kill()
    flush()
    runner.send_message("tb_done", {"worker": j, "sent": sent, "cpu_s": time.process_time() - cpu0})


# ---------------------------------------------------------------------- master
def _drive(env: Any, job_file: Path) -> None:
    runner = env.runner
    spec = json.loads(job_file.read_text())
    jobs, n = spec["jobs"], len(spec["jobs"])
    out = Path(spec["out"])
    ready: set[int] = set()
    finished: dict[int, dict[str, Any]] = {}
    records: list[dict[str, Any]] = []
    runner.register_message("tb_ready", lambda environment, msg, **kw: ready.add(msg.data["worker"]))
    runner.register_message("tb_records", lambda environment, msg, **kw: records.extend(msg.data["records"]))
    runner.register_message("tb_done", lambda environment, msg, **kw: finished.__setitem__(msg.data["worker"],
                                                                                           msg.data))
    deadline = time.monotonic() + spec.get("connect_timeout_s", 120)
    while len(runner.clients) < n:
        if time.monotonic() > deadline:
            log.error("only %d of %d Locust workers connected", len(runner.clients), n)
            _write(out, records, {}, finished, "workers did not connect")
            runner.quit()
            return
        gevent.sleep(0.1)
    nodes = sorted(runner.clients.keys())[:n]
    for j, node in enumerate(nodes):
        runner.send_message("tb_job", {**jobs[j], "url": spec["url"]}, client_id=node)

    def missing(j: int) -> bool:
        c = runner.clients.get(nodes[j])
        return c is None or c.state == STATE_MISSING

    while not all(j in ready or missing(j) for j in range(n)):
        gevent.sleep(0.05)
    t0 = now_ns() + START_MARGIN_NS
    for node in nodes:
        runner.send_message("tb_go", {"t0": t0, "host": socket.gethostname()}, client_id=node)
    last = max((r["offset_ns"] for job in jobs for r in job["requests"]), default=0)
    deadline = time.monotonic() + last / 1e9 + spec.get("run_timeout_s", 900)
    while not all(j in finished or missing(j) for j in range(n)) and time.monotonic() < deadline:
        gevent.sleep(0.1)
    gevent.sleep(FLUSH_S * 2)  # records in flight from a worker that just finished
    states = {j: {"node": nodes[j], "state": "done" if j in finished else ("missing" if missing(j) else "timed out"),
                  "cpu_s": finished.get(j, {}).get("cpu_s")} for j in range(n)}
    _write(out, records, states, finished, None)
    runner.quit()


def _write(out: Path, records: list[dict[str, Any]], states: dict[int, Any], finished: Any, error: str | None) -> None:
    from testbed.io import write_json_atomic, write_text_atomic

    write_text_atomic(out / "locust_records.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_json_atomic(out / "locust_workers.json", {"states": {str(k): v for k, v in states.items()}, "error": error})


@events.init.add_listener
def _init(environment: Any, **kw: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        go = Event()
        state: dict[str, Any] = {}

        def on_go(environment: Any, msg: Any, **kw: Any) -> None:
            state.update(msg.data)
            go.set()

        runner.register_message("tb_job", lambda environment, msg, **kw: gevent.spawn(
            _work, environment, msg.data, go, state))
        runner.register_message("tb_go", on_go)
    elif isinstance(runner, MasterRunner) and environment.parsed_options.tb_job:
        gevent.spawn(_drive, environment, Path(environment.parsed_options.tb_job))
