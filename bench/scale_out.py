"""Past one machine: Locust workers at a high Poisson rate, and Ray Serve replicas against the plan.

(a) **Locust workers**: ``testbed serve --engine null`` (a subprocess on 127.0.0.1), then
    ``--rounds`` runs of the server scenario at ``--locust-rate`` req/s from ``--workers`` Locust
    workers (:func:`testbed.scale.locust_run.locust_bench`): achieved / offered rate
    (offered = (n-1)/(s_n - s_1) of the drawn schedule, achieved = completed / (max e_i - min s_i))
    and each worker's p99 dispatch delay; medians over the rounds.
(b) **Ray Serve replicas**: ``--ray-rounds`` rounds of ``testbed serve --backend ray --replicas R
    --threads 1`` for R = 1 then 2 (``--engine`` / ``--precision``, default ONNX Runtime int8), each
    searched with ``testbed bench --find-peak`` under ``--slo``; per round the speed-up
    2-replica / 1-replica peak, the efficiency E = peak_2 / (2 x peak_1), and the plan's prediction
    (:func:`testbed.scale.plan.predicted_peak`) linear and with E held out (from the other rounds:
    a factor from the same round would predict it exactly), against the measured peak; the
    machine's CPU busy share over the round (psutil: the other work on the machine).

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

import psutil

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from testbed.client.loadgen import LoadSpec  # noqa: E402
from testbed.client.targets import HttpTarget  # noqa: E402
from testbed.datasets import load_dataset  # noqa: E402
from testbed.io import write_text_atomic  # noqa: E402
from testbed.metrics.summary import SLO  # noqa: E402
from testbed.scale.locust_run import locust_bench  # noqa: E402
from testbed.scale.plan import Scaling, predicted_peak  # noqa: E402
from testbed.serve.run import free_port  # noqa: E402
from testbed.signature import git_sha, result_header  # noqa: E402

TESTBED = [sys.executable, "-m", "testbed"]


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def start_server(args: list[str], port: int, timeout_s: float = 600,
                 env: dict[str, str] | None = None, tries: int = 4) -> subprocess.Popen[bytes]:
    """``testbed serve ARGS`` until /health answers; a server that exits is started again (``tries`` in all:
    on a loaded machine Ray's own start can time out: its driver waits a fixed 30 s for the raylet to register,
    "The current node timed out during startup")."""
    for attempt in range(tries):
        try:
            return _start_once(args, port, timeout_s, env)
        except SystemExit:
            if attempt == tries - 1:
                raise
            time.sleep(5)
    raise AssertionError("unreachable")


def _start_once(args: list[str], port: int, timeout_s: float, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
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
    ray = ["--backend", "ray", "--replicas", str(replicas), "--threads", "1", "--ray-pin", args.ray_pin]
    srv = start_server([*ray, *(["--ray-lean"] if args.ray_lean else []), "--engine", args.engine,
                        "--precision", args.precision, "--max-batch-size", str(args.max_batch_size)], port)
    out = tmp / f"peak{replicas}"
    try:
        cmd = [*TESTBED, "bench", "--url", f"http://127.0.0.1:{port}", "--find-peak", "--slo", args.slo,
               "--duration", str(args.trial_s), "--peak-steps", str(args.peak_steps), "--no-progress",
               "--out", str(out)]
        if args.start_rate:
            cmd += ["--rate", str(args.start_rate)]
        if args.peak_min_queries:
            cmd += ["--peak-min-queries", str(args.peak_min_queries)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    finally:
        stop(srv)
    return json.loads((out / "find_peak.json").read_text())["peak_rate"]


HELD_OUT: Scaling | None = None  # --held-out-e: a factor from an earlier run, for a run of one round


def held_out(rows: list[tuple[float | None, float | None]], i: int) -> Scaling | None:
    """The scaling factor from every round but ``i`` (median efficiency), else ``--held-out-e`` (an earlier run's),
    None where neither exists."""
    es = [two / (2 * one) for j, (one, two) in enumerate(rows) if j != i and one and two]
    return Scaling(statistics.median(es), 2, f"rounds other than {i}") if es else HELD_OUT


def ray_part(args: argparse.Namespace, rows: list[tuple[float | None, float | None]], busy: list[float]) -> list[str]:
    """Rows so far: per round (1-replica peak, 2-replica peak), measured back to back."""
    out = [f"## (b) Ray Serve: {args.engine} {args.precision}, 1 thread per replica, pin {args.ray_pin}, "
           f"{'--ray-lean' if args.ray_lean else 'Ray Serve defaults'}, workers at niceness 0, SLO {args.slo}", "",
           "Each round: the 1-replica then the 2-replica find-peak, back to back.  Efficiency E = peak_2 / (2 x "
           "peak_1).  Prediction for round i: 2 x E x peak_1 of round i, with E held out: from the *other* rounds, "
           "else from an earlier run (`--held-out-e`, in the header) -- the plan's `--scaling`; linear: E = 1.", "",
           "| round | machine CPU busy (%) | 1 replica (req/s) | 2 replicas (req/s) | 2 / 1 | E | predicted, linear "
           "| predicted, held-out E | error (held-out E) |", "|---:" * 9 + "|"]
    for i, (one, two) in enumerate(rows):
        sc = held_out(rows, i)
        ratio = f"{two / one:.2f}" if one and two else "-"
        eff = f"{two / (2 * one):.2f}" if one and two else "-"
        lin = f"{predicted_peak(one, 2):.2f}" if one else "-"
        pred = predicted_peak(one, 2, sc) if one and sc else None
        err = f"{100 * (pred - two) / two:+.0f} %" if pred and two else "-"
        out.append(f"| {i} | {busy[i]:.0f} | {_rate(one)} | {_rate(two)} | {ratio} | {eff} | {lin} | {_rate(pred)} | "
                   f"{err} |")
    both = [(o, t) for o, t in rows if o and t]
    if both:
        ratio = statistics.median(t / o for o, t in both)
        errs = [100 * (predicted_peak(o, 2, sc) - t) / t for i, (o, t) in enumerate(rows)
                if o and t and (sc := held_out(rows, i))]
        lin = statistics.median(100 * (predicted_peak(o, 2) - t) / t for o, t in both)
        out += ["", f"Median 2 / 1 replica peak: **{ratio:.2f}x** (target >= 1.6x) over {len(both)} round(s).  "
                f"Linear plan's error: **{lin:+.0f} %**; plan with the held-out measured E: "
                + (f"{', '.join(f'{e:+.0f} %' for e in errs)}: median |error| "
                   f"**{statistics.median(map(abs, errs)):.0f} %** (target within 25 %)." if errs
                   else "no held-out round (one round only: a factor from the same run would be circular).")]
    else:
        out += ["", "No round with a valid peak for both: no ratio."]
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
    ap.add_argument("--peak-steps", type=int, default=2)
    ap.add_argument("--start-rate", type=float, default=4.0, help="find-peak's first rate (no probe)")
    ap.add_argument("--ray-rounds", type=int, default=2)
    ap.add_argument("--ray-pin", default="engine")
    ap.add_argument("--ray-lean", action="store_true")
    ap.add_argument("--held-out-e", type=float, default=None,
                    help="the efficiency an earlier run measured, for the prediction where no other round has one")
    ap.add_argument("--held-out-source", default="", help="where --held-out-e comes from (written in the header)")
    ap.add_argument("--out", default="bench/results/scale_out.md")
    args = ap.parse_args()
    git_sha()  # the tree at the start
    global HELD_OUT
    if args.held_out_e is not None:
        HELD_OUT = Scaling(args.held_out_e, 2, args.held_out_source or "given")
    command = "python bench/scale_out.py " + " ".join(sys.argv[1:])

    def write(body: list[str]) -> str:  # after each part and each Ray round: a cut-short run keeps what it measured
        text = "\n".join(["# Past one machine: Locust workers and Ray Serve replicas", "",
                          result_header(command, rounds=args.rounds, ray_rounds=args.ray_rounds, workers=args.workers,
                                        locust=version("locust"), ray=version("ray"),
                                        **({"held-out E": f"{args.held_out_e} ({args.held_out_source})"}
                                           if args.held_out_e is not None else {})), "", *body]) + "\n"
        write_text_atomic(Path(args.out), text)
        return text

    body = [] if args.no_locust else locust_part(args)
    write(body)
    rows: list[tuple[float | None, float | None]] = []
    busy: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(0 if args.no_ray else args.ray_rounds):
            psutil.cpu_percent()
            rows.append((peak_of(1, args, Path(d)), peak_of(2, args, Path(d))))
            busy.append(psutil.cpu_percent())
            text = write([*body, "", *ray_part(args, rows, busy)])
    print(text if rows else write(body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
