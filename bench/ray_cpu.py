"""Where the Ray Serve path spends the CPU: per-process CPU during a fixed-rate load, 1 and 2 replicas.

For each variant -- ``uvicorn`` (plain ``testbed serve``, the reference), ``ray-nice15`` (``testbed
serve --backend ray`` with Ray's default worker niceness 15, as before), ``ray`` (testbed's
default: Ray Serve's defaults, workers at niceness 0, the engine's threads pinned),
``ray-pin-process`` (every thread of each replica pinned, ``--ray-pin process``) and ``ray-lean``
(``--ray-lean``: Ray Serve's switches that cut per-request work in the proxy and the replica,
:data:`testbed.scale.ray_serve.LEAN_ENV`) -- and each replica count,
the server starts (ONNX Runtime int8, 1 thread per replica, batch 1), then the native client
sends ``--rate`` req/s of Poisson load (``testbed bench --scenario server``, streaming) for
``--requests`` requests while this script samples ``psutil`` every ``--sample-s``: each process's
user + system CPU time, the difference between the first and last sample of the load.  Processes
are classed by their command line (``ray::ServeReplica`` = replica, ``ray::ProxyActor`` = proxy,
``ray::ServeController`` = controller, ``raylet`` / ``gcs_server`` / other ``ray`` = Ray core,
the ``testbed serve`` process itself = driver (uvicorn: the whole server), the load client, and
everything else on the machine = other).  Reported per class: cores (CPU s per wall s) and CPU ms
per completed request; plus the run's achieved rate, median E2E, and each replica's threads
grouped by their allowed cores (``sched_getaffinity(tid)``) with the share of the replica's CPU
each group used: whether the pinning holds for the threads that do the work.

    python bench/ray_cpu.py                           # writes bench/results/ray_cpu.md

Needs the ``scale`` extra and psutil.  The rows are interleaved per round; medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_out import TESTBED, start_server, stop  # noqa: E402

from testbed.io import write_text_atomic  # noqa: E402
from testbed.scale.ray_serve import LEAN_ENV  # noqa: E402
from testbed.serve.run import free_port  # noqa: E402
from testbed.signature import git_sha, result_header  # noqa: E402

# what --ray-lean changes, at Ray Serve 2.60's own defaults, set explicitly
RAY_DEFAULT_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
                   "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1", "RAY_SERVE_LOG_TO_STDERR": "1",
                   "RAY_SERVE_PROXY_USE_GRPC": "0"}
CLASSES = ("replica", "proxy", "controller", "ray core", "driver", "load client", "other")


def classify(p: psutil.Process, driver: int, client: int | None) -> str:
    try:
        cmd = " ".join(p.cmdline())
        anc = {a.pid for a in p.parents()}
    except (psutil.Error, OSError):
        return "other"
    if "ServeReplica" in cmd:
        return "replica"
    if "ProxyActor" in cmd:
        return "proxy"
    if "ServeController" in cmd:
        return "controller"
    if p.pid == driver:
        return "driver"
    if client is not None and (p.pid == client or client in anc):
        return "load client"
    if "ray" in cmd and (driver in anc or "ray/" in cmd or "raylet" in cmd or "gcs_server" in cmd):
        return "ray core"
    return "other"


def cpu_snapshot() -> dict[int, tuple[float, psutil.Process]]:
    snap = {}
    for p in psutil.process_iter():
        try:
            t = p.cpu_times()
            snap[p.pid] = (t.user + t.system, p)
        except (psutil.Error, OSError):
            pass
    return snap


def replica_threads(snap: dict[int, tuple[float, psutil.Process]]) -> dict[int, dict[int, tuple[str, float]]]:
    """Per replica process: each thread's allowed cores and its CPU seconds so far."""
    out: dict[int, dict[int, tuple[str, float]]] = {}
    for pid, (_, p) in sorted(snap.items()):
        try:
            if "ServeReplica" not in " ".join(p.cmdline()):
                continue
            threads = p.threads()
        except (psutil.Error, OSError):
            continue
        out[pid] = {}
        for t in threads:
            try:
                cores = ",".join(map(str, sorted(os.sched_getaffinity(t.id))))
            except OSError:
                continue
            out[pid][t.id] = (cores, t.user_time + t.system_time)
    return out


def pinning(first: dict[int, dict[int, tuple[str, float]]], last: dict[int, dict[int, tuple[str, float]]]) -> list[str]:
    """Per replica: its threads grouped by allowed cores, with the share of the replica's CPU each group used."""
    out = []
    for pid, threads in last.items():
        groups: dict[str, list[float]] = defaultdict(list)
        for tid, (cores, t) in threads.items():
            groups[cores].append(t - first.get(pid, {}).get(tid, (cores, 0.0))[1])
        total = sum(sum(v) for v in groups.values()) or 1.0
        out.append("; ".join(f"{len(v)} threads on cores {c}: {100 * sum(v) / total:.0f} % of its CPU"
                             for c, v in sorted(groups.items())))
    return out


def measure(variant: str, replicas: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    port = free_port()
    common = ["--threads", "1", "--engine", args.engine, "--precision", args.precision, "--max-batch-size", "1",
              "--log-level", "warning"]
    ray = [] if variant == "uvicorn" else ["--backend", "ray", "--replicas", str(replicas),
                                           "--ray-pin", "process" if variant == "ray-pin-process" else "engine"]
    ray += ["--ray-lean"] if variant == "ray-lean" else []
    env = {**os.environ, **(RAY_DEFAULT_ENV if variant != "ray-lean" else {})}
    if variant == "ray-nice15":
        env["RAY_worker_niceness"] = "15"  # Ray's own default
    srv = start_server([*ray, *common], port, env=env)
    out = tmp / f"{variant}-{replicas}"
    try:
        client = subprocess.Popen([*TESTBED, "bench", "--url", f"http://127.0.0.1:{port}", "--scenario", "server",
                                   "--rate", str(args.rate), "--num-requests", str(args.requests), "--warmup", "10",
                                   "--no-progress", "--out", str(out)], stdout=subprocess.DEVNULL)
        time.sleep(args.settle_s)  # warm-up requests and the client's start are outside the window
        first = cpu_snapshot()
        t0 = t1 = time.monotonic()
        threads0 = threads1 = replica_threads(first)
        cls = {pid: classify(p, srv.pid, client.pid) for pid, (_, p) in first.items()}  # while they live
        last = first
        while client.poll() is None:
            time.sleep(args.sample_s)
            now = cpu_snapshot()
            if client.poll() is None:
                last, t1, threads1 = now, time.monotonic(), replica_threads(now)
                cls.update({pid: classify(p, srv.pid, client.pid) for pid, (_, p) in now.items() if pid not in cls})
        client.wait()
    finally:
        stop(srv)
    summary = json.loads((out / "summary.json").read_text())["summary"]
    wall = t1 - t0
    cpu: dict[str, float] = defaultdict(float)
    for pid, (t, _) in last.items():
        cpu[cls.get(pid, "other")] += t - (first[pid][0] if pid in first else 0.0)
    completed = summary["request_throughput"] * wall
    return {"variant": variant, "replicas": replicas, "wall_s": wall, "cores": {k: cpu[k] / wall for k in CLASSES},
            "ms_per_request": {k: 1000 * cpu[k] / completed for k in CLASSES},
            "achieved": summary["request_throughput"], "median_e2e_ms": summary.get("median_e2el_ms"),
            "failed": summary.get("failed"), "affinity": pinning(threads0, threads1)}


def render(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    by: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[(r["variant"], r["replicas"])].append(r)
    med = statistics.median
    head = ("| server | replicas | achieved (req/s) | median E2E (ms) | failed | "
            + " | ".join(CLASSES) + " | all |")
    rounds = max(len(rs) for rs in by.values())
    out = [f"## CPU per component at {args.rate:g} req/s (Poisson, streaming), median of up to {rounds} round(s)", "",
           "Cores used (CPU s per wall s) per class of process; 2 cores in the machine.", "",
           head, "|---|---:|---:|---:|---:|" + "---:|" * (len(CLASSES) + 1)]
    for (v, n), rs in by.items():
        cores = [med(r["cores"][k] for r in rs) for k in CLASSES]
        out.append(f"| {v} | {n} | {med(r['achieved'] for r in rs):.2f} | {med(r['median_e2e_ms'] for r in rs):.0f} | "
                   f"{max(r['failed'] for r in rs)} | " + " | ".join(f"{c:.2f}" for c in cores)
                   + f" | {sum(cores):.2f} |")
    out += ["", "CPU ms per completed request, per class (the serving stack's cost of one request):", "",
            "| server | replicas | " + " | ".join(CLASSES[:-1]) + " | serving stack (all but client, other) |",
            "|---|---:|" + "---:|" * len(CLASSES)]
    for (v, n), rs in by.items():
        ms = [med(r["ms_per_request"][k] for r in rs) for k in CLASSES[:-1]]
        stack = med(sum(r["ms_per_request"][k] for k in CLASSES[:-2]) for r in rs)
        out.append(f"| {v} | {n} | " + " | ".join(f"{m:.1f}" for m in ms) + f" | {stack:.1f} |")
    out += ["", "Replica threads by allowed cores, and the share of the replica's CPU time each group used "
            "(first round):", ""]
    for (v, n), rs in by.items():
        for i, a in enumerate(rs[0]["affinity"]):
            out.append(f"- {v}, {n} replicas, replica {i}: {a}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--requests", type=int, default=120)
    ap.add_argument("--variants", default="uvicorn,ray-nice15,ray,ray-pin-process,ray-lean")
    ap.add_argument("--engine", default="onnxruntime")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--sample-s", type=float, default=1.0)
    ap.add_argument("--settle-s", type=float, default=8.0)
    ap.add_argument("--out", default="bench/results/ray_cpu.md")
    ap.add_argument("--replay", default=None,
                    help="render the rows (one JSON object a line, as this script prints them) of an earlier run "
                         "instead of measuring; --replay-facts says which run (its commit, its load)")
    ap.add_argument("--replay-facts", default="", help="key=value;... added to the header with --replay")
    args = ap.parse_args()
    git_sha()
    runs = [(v, n) for v in args.variants.split(",") for n in ((1,) if v == "uvicorn" else (1, 2))]
    rows = []
    facts: dict[str, str] = {}
    if args.replay:
        rows = [json.loads(ln) for ln in Path(args.replay).read_text().splitlines() if ln.startswith("{")]
        facts = {"replayed": f"{len(rows)} rows of {args.replay}",
                 **dict(kv.split("=", 1) for kv in args.replay_facts.split(";") if kv)}
    else:
        with tempfile.TemporaryDirectory() as d:
            for _ in range(args.rounds):
                for v, n in runs:
                    rows.append(measure(v, n, args, Path(d)))
                    print(json.dumps(rows[-1]), flush=True)
    command = "python bench/ray_cpu.py " + " ".join(sys.argv[1:])
    text = "\n".join(["# Ray Serve: where the CPU goes", "",
                      result_header(command, rounds=args.rounds, rate=args.rate, requests=args.requests,
                                    ray=version("ray"), lean_env=" ".join(f"{k}={v}" for k, v in LEAN_ENV.items()),
                                    **facts),
                      "", *render(rows, args)]) + "\n"
    write_text_atomic(Path(args.out), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
