"""Past one machine: Locust workers at a high Poisson rate, and Ray Serve replicas against the plan.

(a) **Locust workers**: ``testbed serve --engine null`` (a subprocess on 127.0.0.1), then
    ``--rounds`` runs of the server scenario at ``--locust-rate`` req/s from ``--workers`` Locust
    workers (:func:`testbed.scale.locust_run.locust_bench`): achieved / offered rate
    (offered = (n-1)/(s_n - s_1) of the drawn schedule, achieved = completed / (max e_i - min s_i))
    and each worker's p99 dispatch delay; medians over the rounds.
(b) **Ray Serve replicas**: ``testbed serve --backend ray --replicas R --threads 1`` for R = 1
    then 2 (``--engine`` / ``--precision``, default ONNX Runtime int8), each searched with
    ``testbed bench --find-peak`` under ``--slo``; the plan's prediction for 2 replicas
    (:func:`testbed.scale.plan.predicted_peak`: 2 x the 1-replica peak) against the measured one,
    and the speed-up 2-replica / 1-replica peak.

    python bench/scale_out.py                                  # writes bench/results/scale_out.md
    python bench/scale_out.py --rounds 1 --no-ray              # only (a)

Needs the ``scale`` extra (``pip install -e '.[scale]'``) and, for (b), the ONNX Runtime
artefact (exported on first use).  Quiet machine wanted: the header records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from testbed.client.loadgen import LoadSpec  # noqa: E402
from testbed.client.targets import HttpTarget  # noqa: E402
from testbed.datasets import load_dataset  # noqa: E402
from testbed.io import write_text_atomic  # noqa: E402
from testbed.metrics.summary import SLO  # noqa: E402
from testbed.scale.locust_run import locust_bench  # noqa: E402
from testbed.scale.plan import predicted_peak  # noqa: E402
from testbed.serve.run import free_port  # noqa: E402
from testbed.signature import git_sha, result_header  # noqa: E402

TESTBED = [sys.executable, "-m", "testbed"]


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def start_server(args: list[str], port: int, timeout_s: float = 600,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*TESTBED, "serve", "--port", str(port), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"testbed serve {' '.join(args)} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"testbed serve {' '.join(args)} did not answer /health in {timeout_s:g} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # Ray: serve_forever shuts Ray down on the way out
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def offered_rate(records: list[Any]) -> float:
    s = sorted(r.schedule_ns for r in records if not r.warmup)
    return (len(s) - 1) / ((s[-1] - s[0]) / 1e9)


def locust_part(args: argparse.Namespace) -> list[str]:
    port = free_port()
    srv = start_server(["--engine", "null", "--max-new-tokens", "8", "--max-queue", "4096",
                        "--max-batch-size", "16", "--log-level", "warning"], port)
    rows = []
    try:
        exs = load_dataset("test", limit=200)
        for rnd in range(args.rounds):
            spec = LoadSpec("server", rate=args.locust_rate, num_requests=args.locust_n, warmup=20, seed=rnd)
            res = locust_bench(HttpTarget(f"http://127.0.0.1:{port}", "marian-en-de"), exs, spec, SLO(),
                               {"target": "null"}, args.workers)
            s = res["summary"]
            rows.append({"offered": offered_rate(res["records"]), "achieved": s["request_throughput"],
                         "failed": s["failed"], "workers": res["workers"]})
    finally:
        stop(srv)
    out = [f"## (a) Locust: {args.workers} workers, Poisson {args.locust_rate:g} req/s, {args.locust_n} requests, "
           "null engine", "", "| round | offered (req/s) | achieved (req/s) | achieved / offered | failed | "
           "p99 dispatch delay per worker (ms) |", "|---:|---:|---:|---:|---:|---|"]
    for i, r in enumerate(rows):
        d = ", ".join(f"{w['p99_dispatch_delay_ms']:.2f}" for w in r["workers"])
        out.append(f"| {i} | {r['offered']:.1f} | {r['achieved']:.1f} | {r['achieved'] / r['offered']:.3f} | "
                   f"{r['failed']} | {d} |")
    ratio = statistics.median(r["achieved"] / r["offered"] for r in rows)
    out += ["", f"Median achieved / offered: **{ratio:.3f}** (target >= 0.95)."]
    return out


def peak_of(replicas: int, args: argparse.Namespace, tmp: Path) -> float | None:
    port = free_port()
    srv = start_server(["--backend", "ray", "--replicas", str(replicas), "--threads", "1", "--engine", args.engine,
                        "--precision", args.precision, "--max-batch-size", str(args.max_batch_size)], port)
    out = tmp / f"peak{replicas}"
    try:
        cmd = [*TESTBED, "bench", "--url", f"http://127.0.0.1:{port}", "--find-peak", "--slo", args.slo,
               "--duration", str(args.trial_s), "--peak-steps", str(args.peak_steps), "--no-progress",
               "--out", str(out)]
        if args.peak_min_queries:
            cmd += ["--peak-min-queries", str(args.peak_min_queries)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    finally:
        stop(srv)
    return json.loads((out / "find_peak.json").read_text())["peak_rate"]


def ray_part(args: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        one = peak_of(1, args, Path(d))
        two = peak_of(2, args, Path(d))
    out = [f"## (b) Ray Serve: {args.engine} {args.precision}, 1 thread per replica, SLO {args.slo}", "",
           "| replicas | find-peak rate (req/s) |", "|---:|---:|", f"| 1 | {_rate(one)} |", f"| 2 | {_rate(two)} |", ""]
    if one and two:
        pred = predicted_peak(one, 2)
        out += [f"2 / 1 replica peak: **{two / one:.2f}x** (target >= 1.6x); plan's prediction {pred:.3g} req/s, "
                f"measured {two:.3g}: error **{100 * (pred - two) / two:+.0f} %** (target within 25 %)."]
    else:
        out += ["No valid peak for one of the two: no ratio."]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--locust-rate", type=float, default=300.0)
    ap.add_argument("--locust-n", type=int, default=6000)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--no-locust", action="store_true")
    ap.add_argument("--engine", default="onnxruntime")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--max-batch-size", type=int, default=1)
    ap.add_argument("--slo", default="ttft=500,e2e=2000")
    ap.add_argument("--trial-s", type=float, default=20.0)
    ap.add_argument("--peak-min-queries", type=int, default=None)
    ap.add_argument("--peak-steps", type=int, default=3)
    ap.add_argument("--out", default="bench/results/scale_out.md")
    args = ap.parse_args()
    git_sha()  # the tree at the start
    body = [] if args.no_locust else locust_part(args)
    if not args.no_ray:
        body += ["", *ray_part(args)]
    command = "python bench/scale_out.py " + " ".join(sys.argv[1:])
    text = "\n".join(["# Past one machine: Locust workers and Ray Serve replicas", "",
                      result_header(command, rounds=args.rounds, workers=args.workers,
                                                    locust=version("locust"), ray=version("ray")), "", *body]) + "\n"
    write_text_atomic(Path(args.out), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
