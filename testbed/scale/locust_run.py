"""``testbed bench --url URL --workers N``: the native scenarios from N Locust workers under a Locust master.

This process (no gevent) draws the schedule and writes each worker's job
(:func:`testbed.scale.jobs.worker_jobs`), starts ``locust --master`` and N ``locust --worker``
processes on 127.0.0.1 with :mod:`testbed.scale.locustfile`, waits for the master to write what
it collected, adds the lost requests of any worker that died (failed, never dropped), and
reports through the native client's :func:`testbed.client.bench.report`: the same
``records.jsonl`` (each record with ``extra.worker``), ``summary.json`` and ``summary.md``, plus
``workers``: per worker its requests, lost requests, state and dispatch delay.

Across machines, the same locustfile runs under Locust's own flags: ``--master`` here (only the
master; ``--master-bind-host`` to listen past loopback), ``testbed bench --worker --master-host
HOST`` (or ``locust -f <locustfile> --worker --master-host HOST``) on each load machine.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from testbed.client.loadgen import LoadSpec, RunRecords
from testbed.datasets import Example
from testbed.errors import TestbedError
from testbed.io import write_json_atomic, write_text_atomic
from testbed.metrics import summary as S
from testbed.metrics.records import RequestRecord
from testbed.scale import require
from testbed.scale.jobs import LOST_ERROR, lost_records, merge, worker_jobs, worker_table

log = logging.getLogger(__name__)
LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def locust_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "WARNING", *args]


def worker_cmd(master_host: str, master_port: int = 5557) -> list[str]:
    """A Locust worker of testbed's locustfile (this machine or another one)."""
    return locust_cmd("--worker", "--master-host", master_host, "--master-port", str(master_port))


def start(url: str, job_file: Path, workers: int, port: int, local_workers: bool, bind_host: str,
          log_file: Any) -> tuple[subprocess.Popen[bytes], list[subprocess.Popen[bytes]]]:
    master = subprocess.Popen(locust_cmd("--master", "--headless", "--host", url, "--master-bind-host", bind_host,
                                         "--master-bind-port", str(port), "--expect-workers", str(workers),
                                         "-u", str(workers), "-r", str(max(100, workers)), "--tb-job", str(job_file)),
                              stdout=log_file, stderr=subprocess.STDOUT)
    procs = [subprocess.Popen(worker_cmd("127.0.0.1", port), stdout=log_file, stderr=subprocess.STDOUT)
             for _ in range(workers if local_workers else 0)]
    return master, procs


def collect(out: Path, jobs: Sequence[dict[str, Any]]) -> tuple[list[RequestRecord], dict[int, Any]]:
    """The master's records plus a failed record for each request a dead worker never reported."""
    wfile = out / "locust_workers.json"
    if not wfile.exists():
        raise TestbedError(f"the Locust master wrote no results in {out} (see {out / 'locust.log'})")
    info = json.loads(wfile.read_text())
    if info.get("error"):
        raise TestbedError(f"Locust run failed: {info['error']} (see {out / 'locust.log'})")
    states = {int(k): v for k, v in info["states"].items()}
    recs = [RequestRecord.from_dict(json.loads(line))
            for line in (out / "locust_records.jsonl").read_text().splitlines() if line]
    by_worker: dict[int, set[str]] = {}
    for r in recs:
        by_worker.setdefault(int(r.extra.get("worker", -1)), set()).add(r.request_id)
    end = max((r.done_ns or r.schedule_ns for r in recs), default=0)
    for job in jobs:
        lost = lost_records(job, by_worker.get(job["worker"], set()), end)
        if lost:
            log.warning("Locust worker %d (%s): %d requests lost", job["worker"], states.get(job["worker"]), len(lost))
        recs.extend(lost)
    return merge(recs), states


def run_workers(target: Any, examples: Sequence[Example], spec: LoadSpec, workers: int,
                out_dir: Path | None = None, local_workers: bool = True, bind_host: str = "127.0.0.1",
                port: int | None = None, timeout_s: float = 1800.0,
                on_started: Callable[[list[subprocess.Popen[bytes]]], None] | None = None
                ) -> tuple[RunRecords, list[dict[str, Any]]]:
    """Run ``spec`` from ``workers`` Locust workers; the merged records and the per-worker table."""
    require("testbed bench --workers", "locust")
    from testbed.serve.run import free_port

    if not 1 <= workers <= 256:
        raise TestbedError(f"--workers {workers}: give 1 to 256 Locust worker processes")
    if spec.scenario == "singlestream":
        raise TestbedError("--workers runs server, offline or concurrency; singlestream is one request at a time")
    if spec.scenario == "concurrency" and spec.num_requests is None and spec.duration_s is not None:
        raise TestbedError("--workers with --scenario concurrency: give --num-requests (not --duration)")
    jobs = worker_jobs(spec, examples, workers, target.body)
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="testbed-locust-")
        out = Path(tmp.name)
    else:
        out = out_dir
    out.mkdir(parents=True, exist_ok=True)
    for name in ("locust_workers.json", "locust_records.jsonl"):
        (out / name).unlink(missing_ok=True)
    job_file = out / "locust_job.json"
    write_json_atomic(job_file, {"jobs": jobs, "url": target.url, "out": str(out)})
    port = port or free_port()
    try:
        with open(out / "locust.log", "wb") as lf:
            master, procs = start(target.url, job_file, workers, port, local_workers, bind_host, lf)
            if on_started is not None:
                on_started(procs)
            try:
                master.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise TestbedError(f"the Locust run took over {timeout_s:g} s (see {out / 'locust.log'})") from None
            finally:
                for p in [master, *procs]:
                    if p.poll() is None:
                        p.terminate()
                for p in [master, *procs]:
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        p.kill()
        recs, states = collect(out, jobs)
    finally:
        job_file.unlink(missing_ok=True)
        if tmp is not None:
            tmp.cleanup()
    table = worker_table(jobs, recs, states)
    cpu = [row["cpu_s"] for row in table if row["cpu_s"] is not None]
    return RunRecords(recs, client_cpu_s=sum(cpu) if cpu else None, client_procs=workers), table


def worker_markdown(table: Sequence[dict[str, Any]]) -> str:
    rows = ["| worker | state | assigned | recorded | lost | dispatch delay p50 / p99 / max (ms) |",
            "|---:|---|---:|---:|---:|---|"]
    for r in table:
        d = " / ".join("-" if r[k] is None else f"{r[k]:.3f}" for k in
                       ("median_dispatch_delay_ms", "p99_dispatch_delay_ms", "max_dispatch_delay_ms"))
        rows.append(f"| {r['worker']} | {r['state']} | {r['assigned']} | {r['recorded']} | {r['lost']} | {d} |")
    return "\n".join(rows)


def locust_bench(target: Any, examples: Sequence[Example], spec: LoadSpec, slo: S.SLO, describe: dict[str, Any],
                 workers: int, out_dir: Path | None = None, local_workers: bool = True,
                 bind_host: str = "127.0.0.1", port: int | None = None,
                 on_started: Callable[[list[subprocess.Popen[bytes]]], None] | None = None) -> dict[str, Any]:
    """:func:`run_workers`, then the native report plus ``workers`` (summary.json and summary.md)."""
    from testbed.client.bench import report

    t = time.monotonic()
    recs, table = run_workers(target, examples, spec, workers, out_dir, local_workers, bind_host, port,
                              on_started=on_started)
    log.info("Locust run: %.1f s", time.monotonic() - t)
    lost = sum(r["lost"] for r in table)
    head = {"Locust workers": f"{workers} ({sum(1 for r in table if r['state'] == 'done')} finished, "
                              f"{lost} requests lost)"}
    describe = {**describe, "load": f"locust, {workers} workers"}
    res = report(recs, spec, slo, describe, examples, out_dir,
                 f"{spec.scenario.capitalize()}, {describe.get('target')}, {workers} Locust workers", extra_head=head)
    wmd = worker_markdown(table)
    if lost:
        wmd += f"\n\n**{lost} requests lost** with their worker(s): counted as failed ({LOST_ERROR!r})."
    res["workers"] = table
    res["markdown"] += "\n\n### Locust workers\n\n" + wmd
    if out_dir is not None:
        summary = json.loads((out_dir / "summary.json").read_text())
        summary["workers"] = table
        write_json_atomic(out_dir / "summary.json", summary)
        write_text_atomic(out_dir / "summary.md", (out_dir / "summary.md").read_text() + "\n### Locust workers\n\n"
                          + wmd + "\n")
    return res


def locust_find_peak(make_target: Callable[[], Any], examples: Sequence[Example], spec: LoadSpec, slo: S.SLO,
                     describe: dict[str, Any], workers: int, out_dir: Path | None, search: Any,
                     on_trial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """``--find-peak --workers N``: the native search, each server trial run from ``workers`` local Locust workers
    (a fresh master and workers per trial); the start-rate probe (one request at a time) runs natively."""
    from testbed.client.bench import run_records
    from testbed.client.peak import find_peak

    def trial(s: LoadSpec) -> list[RequestRecord]:
        if s.scenario == "singlestream":
            return run_records(make_target, examples, s, False)
        return run_workers(make_target(), examples, s, workers)[0]

    return find_peak(make_target, examples, spec, slo, {**describe, "load": f"locust, {workers} workers"}, out_dir,
                     progress=False, search=search, run_trial=trial, on_trial=on_trial)
