"""Client overhead: how fast the load generator dispatches, and what HTTP adds to TTFT.

Against the null engine (no model, no work: N tokens per request) served by `testbed serve` in a
separate process on 127.0.0.1, measured side by side in one run:

1. dispatch: Poisson runs at increasing rates, for each HTTP client (aiohttp, httpx): the p99
   dispatch delay (a_i - s_i) and the highest rate where it stays below 1 ms with no failure
   (goal: >= 500 req/s);
2. transport: at concurrency 1 (SingleStream), served TTFT (HTTP + server) and in-process TTFT
   (the same batcher, no HTTP), in interleaved blocks so drift hits both alike; the difference
   of the medians (goal: < 2 ms), and the ratio.

    python bench/client.py                      # rates 100..3200, 2 s each; 300 requests at c=1
    python bench/client.py --rates 250,500,1000 --seconds 4 --tokens 16
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import httpx

from testbed.client.loadgen import LoadSpec, run
from testbed.client.targets import HttpTarget, InprocTarget
from testbed.config import EngineConfig
from testbed.datasets import load_dataset
from testbed.engines.registry import create_engine
from testbed.metrics import summary as S
from testbed.serve.batcher import BatchConfig
from testbed.serve.run import free_port
from testbed.signature import machine


def start_server(port: int, tokens: int, batch: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "testbed.cli", "serve", "--engine", "null", "--port", str(port),
           "--max-new-tokens", str(tokens), "--max-batch-size", str(batch), "--max-wait-ms", "0",
           "--max-queue", "100000", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by this process, or by process ``pid``."""
    if pid is None:
        return time.process_time()
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="100,200,400,800,1600,3200", help="Poisson rates to try (req/s)")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds of load per rate")
    ap.add_argument("--tokens", type=int, default=16, help="tokens per request (null engine)")
    ap.add_argument("-n", "--requests", type=int, default=300, help="requests at concurrency 1, per target")
    ap.add_argument("--blocks", type=int, default=6, help="interleaved blocks at concurrency 1")
    ap.add_argument("--clients", default="aiohttp,httpx")
    ap.add_argument("--server-batch", type=int, default=8, help="the null server's max batch size")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    examples = load_dataset("test", limit=400)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(port, args.tokens, args.server_batch)
    m = machine()
    print(f"null engine, {args.tokens} tokens/request, server in its own process (batch <= {args.server_batch}); "
          f"{m['cpu']} x{m['cores']}; load average {os.getloadavg()[0]:.1f} at start\n")
    try:
        # ---------------------------------------------------------- 1. dispatch delay vs rate
        print("| client | rate (req/s) | sent | failed | achieved (req/s) | p50 dispatch ms | p99 dispatch ms "
              "| max dispatch ms | p50 TTFT ms | p99 TTFT ms | client CPU ms/req | server CPU ms/req |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        best: dict[str, float] = {}
        for client in args.clients.split(","):
            best[client] = 0.0
            for rate in [float(r) for r in args.rates.split(",")]:
                spec = LoadSpec("server", rate=rate, num_requests=max(50, int(rate * args.seconds)), warmup=20, seed=1)
                c0, s0 = cpu_s(), cpu_s(proc.pid)
                recs = run(HttpTarget(url, "marian-en-de", max_tokens=args.tokens, client=client), examples, spec)
                n_all = len(recs)
                c_ms, s_ms = (cpu_s() - c0) * 1e3 / n_all, (cpu_s(proc.pid) - s0) * 1e3 / n_all
                s = S.summarize(recs)
                ok = s.failed == 0 and s.p99_dispatch_delay_ms is not None and s.p99_dispatch_delay_ms < 1.0
                if ok:
                    best[client] = max(best[client], rate)
                print(f"| {client} | {rate:g} | {spec.num_requests} | {s.failed} "
                      f"| {S.fmt(s.request_throughput, '.0f')} "
                      f"| {S.fmt(s.median_dispatch_delay_ms, '.3f')} | {S.fmt(s.p99_dispatch_delay_ms, '.3f')} "
                      f"| {S.fmt(s.max_dispatch_delay_ms, '.3f')} | {S.fmt(s.median_ttft_ms, '.2f')} "
                      f"| {S.fmt(s.p99_ttft_ms, '.2f')} | {c_ms:.3f} | {s_ms:.3f} |", flush=True)
                if not ok and s.p99_dispatch_delay_ms is not None and s.p99_dispatch_delay_ms > 50:
                    break  # saturated: higher rates only queue up
        print()
        for client, rate in best.items():
            print(f"highest Poisson rate with p99 dispatch delay < 1 ms, {client}: "
                  f"{rate:g} req/s (goal >= 500) -> {'met' if rate >= 500 else 'NOT met'}")
        print("(CPU ms/req: process CPU time over the run / requests; 1000 / that bounds the rate one free "
              "core sustains, whatever the machine's load)")

        # ---------------------------------------------------------- 2. served vs in-process TTFT at c=1
        engine = create_engine(EngineConfig(engine="null", max_new_tokens=args.tokens))
        per_block = max(1, args.requests // args.blocks)
        served: list = []
        inproc: list = []
        for b in range(args.blocks):
            exs = examples[b * per_block:(b + 1) * per_block]
            spec = LoadSpec("singlestream", num_requests=len(exs), warmup=5)
            served += run(HttpTarget(url, "marian-en-de", max_tokens=args.tokens), exs, spec)
            inproc += run(InprocTarget(engine, BatchConfig(max_batch_size=1), max_tokens=args.tokens), exs, spec)
        ss, si = S.summarize(served), S.summarize(inproc)
        print("\n| concurrency 1 | n | p50 TTFT ms | p90 TTFT ms | p99 TTFT ms | p50 E2E ms |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, s in (("served (HTTP, aiohttp)", ss), ("in-process (same batcher)", si)):
            print(f"| {name} | {s.completed} | {S.fmt(s.median_ttft_ms, '.3f')} | {S.fmt(s.p90_ttft_ms, '.3f')} "
                  f"| {S.fmt(s.p99_ttft_ms, '.3f')} | {S.fmt(s.median_e2el_ms, '.3f')} |")
        if ss.median_ttft_ms is not None and si.median_ttft_ms is not None:
            diff = ss.median_ttft_ms - si.median_ttft_ms
            print(f"\nserved - in-process median TTFT: {diff:.3f} ms (goal < 2 ms) -> "
                  f"{'met' if diff < 2 else 'NOT met'}; ratio served / in-process "
                  f"{ss.median_ttft_ms / si.median_ttft_ms:.1f}x")
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
