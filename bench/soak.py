"""Soak: a served configuration under Poisson load for a long time; memory, errors, latency drift.

Starts `testbed serve` in its own process, then runs the server scenario at --rate for --minutes,
in windows of --window seconds (a fresh Poisson seed per window).  Per window: requests,
failures (by error), p50/p99 TTFT and E2E, the server's resident memory (VmRSS) and its queue
depth from /metrics.  Ends with the memory growth from the first window to the last and the
error total; the server must still answer /health.

    python bench/soak.py --rate 20 --minutes 10                       # marian-en-de, torch fp32
    python bench/soak.py --engine null --rate 300 --minutes 2 --window 20
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter

import httpx

from testbed.client.loadgen import LoadSpec, run
from testbed.client.targets import HttpTarget
from testbed.datasets import load_dataset
from testbed.metrics import summary as S
from testbed.serve.run import free_port


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="marian-en-de")
    ap.add_argument("--engine", default="torch")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--rate", type=float, required=True, help="Poisson rate (req/s): the peak found by --find-peak")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--window", type=float, default=60.0, help="seconds per reported window")
    ap.add_argument("--dataset", default="test")
    args = ap.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "testbed.cli", "serve", "--model", args.model, "--engine", args.engine,
           "--precision", args.precision, "--threads", str(args.threads), "--port", str(port),
           "--max-batch-size", str(args.max_batch_size), "--max-queue", str(args.max_queue), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("server did not start") from None
            time.sleep(0.3)
    examples = load_dataset(args.dataset)
    print(f"soak: {args.model} {args.engine}/{args.precision} t{args.threads} batch<={args.max_batch_size} "
          f"queue {args.max_queue}, Poisson {args.rate:g} req/s for {args.minutes:g} min "
          f"(windows of {args.window:g} s); load average {os.getloadavg()[0]:.1f}\n")
    print("| window | requests | failed | p50 TTFT ms | p99 TTFT ms | p50 E2E ms | p99 E2E ms | server RSS MB "
          "| queue depth after |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    errors: Counter[str] = Counter()
    rss: list[float] = [rss_mb(proc.pid)]
    total = failed = 0
    n_windows = max(1, round(args.minutes * 60 / args.window))
    try:
        for w in range(n_windows):
            spec = LoadSpec("server", rate=args.rate, duration_s=args.window, warmup=0, seed=1000 + w)
            recs = run(HttpTarget(url, args.model), examples, spec)
            s = S.summarize(recs)
            errors.update(s.errors)
            total += s.completed + s.failed
            failed += s.failed
            rss.append(rss_mb(proc.pid))
            depth = next((line.split()[-1] for line in httpx.get(f"{url}/metrics").text.splitlines()
                          if line.startswith("testbed_queue_depth ")), "?")
            print(f"| {w + 1} | {s.completed + s.failed} | {s.failed} | {S.fmt(s.median_ttft_ms, '.1f')} "
                  f"| {S.fmt(s.p99_ttft_ms, '.1f')} | {S.fmt(s.median_e2el_ms, '.1f')} | {S.fmt(s.p99_e2el_ms, '.1f')} "
                  f"| {rss[-1]:.0f} | {depth} |", flush=True)
        alive = httpx.get(f"{url}/health").status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"\n{total} requests, {failed} failed ({dict(errors) or 'no errors'}); server RSS {rss[0]:.0f} MB idle -> "
          f"{rss[1]:.0f} MB after window 1 -> {rss[-1]:.0f} MB at the end (max {max(rss):.0f} MB, "
          f"growth after window 1: {rss[-1] - rss[1]:+.0f} MB); server answered /health at the end: {alive}")
    return 0 if alive else 1


if __name__ == "__main__":
    raise SystemExit(main())
