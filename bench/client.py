"""Client overhead: how fast each load-generator client dispatches, what it costs, what HTTP adds to TTFT.

Against the null engine (no model, no work: N tokens per request) served by `testbed serve` in a
separate process on 127.0.0.1, measured side by side, interleaved, in one run:

1. dispatch: Poisson runs (testbed's seeded schedule) at each rate, for each client: testbed's lean
   client (asyncio + httptools; the timer thread sends) in one process, as `lean-loop` (arrivals
   handed to the event loop instead) and in `lean:K` processes sharing the stream, aiohttp
   (testbed's previous client) and Locust's FastHttpUser (`bench/locust_poisson.py`, a child process).
   Per rate and client, medians over the rounds of: the p99 dispatch delay (a_i - s_i), the achieved
   rate, the p99 event-loop lag (testbed's clients), TTFT, and the client and server CPU time per
   request.  Goal: p99 dispatch delay < 1 ms at >= 500 req/s.  The `floor` row is a bare thread
   sleeping to the same scheduled times (no HTTP, no loop): the OS wake-up latency of the machine
   at that moment, which every client's timer pays too -- a p99 above 1 ms there means the machine,
   not the client, decides the verdict;
2. transport: at concurrency 1 (SingleStream), served TTFT (HTTP + server) and in-process TTFT
   (the same batcher, no HTTP), in interleaved blocks; the difference of the medians (goal: < 2 ms).

    python bench/client.py                                  # rates 250..1000, 4 s each, 3 rounds
    python bench/client.py --rates 500 --seconds 6 --clients lean,lean:2 --out bench/results/x.md

The Locust row needs `pip install 'locust>=2.40'` (or `pip install -e '.[bench]'`); without it the
row is skipped with that message.  The machine is shared: the header records the load average, and
numbers taken under load are not the quiet-machine claim.
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
from pathlib import Path
from typing import Any

import httpx

from testbed.client.loadgen import LoadSpec, RunRecords, run
from testbed.client.targets import HttpTarget, InprocTarget
from testbed.config import EngineConfig
from testbed.datasets import load_dataset
from testbed.engines.registry import create_engine
from testbed.io import write_text_atomic
from testbed.metrics import summary as S
from testbed.metrics.records import RequestRecord
from testbed.metrics.saturation import run_verdict
from testbed.serve.batcher import BatchConfig
from testbed.serve.run import free_port
from testbed.signature import load_average, result_header

HERE = Path(__file__).resolve().parent
WARMUP = 20
SATURATED_MS = 50.0  # a client past this p99 dispatch delay only queues up at higher rates: skipped


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


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def locust_available() -> bool:
    """Whether locust is installed -- without importing it (its import monkey-patches this process)."""
    import importlib.util

    return importlib.util.find_spec("locust") is not None


def run_locust(url: str, rate: float, n: int, seed: int, tokens: int) -> RunRecords:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "records.jsonl"
        subprocess.run([sys.executable, str(HERE / "locust_poisson.py"), "--url", url, "--rate", str(rate),
                        "-n", str(n), "--seed", str(seed), "--tokens", str(tokens), "--warmup", str(WARMUP),
                        "--out", str(out)], check=True)
        lines = out.read_text().splitlines()
    recs = [RequestRecord.from_dict(json.loads(line)) for line in lines[:-1]]
    return RunRecords(recs, client_cpu_s=json.loads(lines[-1])["cpu_s"])


def wake_floor(rate: float, n: int, seed: int) -> RunRecords:
    """The machine's floor: a bare thread sleeping to each scheduled time (no HTTP, no event loop);
    its lateness is the OS wake-up latency every client's timer pays too ("send" = wake-up)."""
    from testbed.client.loadgen import poisson_offsets_ns
    from testbed.clock import now_ns

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        cpu0 = time.process_time()
        t0 = now_ns() + 20_000_000
        recs = []
        for k, o in enumerate(poisson_offsets_ns(rate, seed, n=n)):
            t = t0 + o
            while (wait := (t - now_ns()) / 1e9) > 0:
                time.sleep(min(wait, 0.05))
            a = now_ns()
            recs.append(RequestRecord(str(k), schedule_ns=t, send_ns=a, chunk_ns=[a], chunk_tokens=[1], n_out=1))
        return RunRecords(recs, client_cpu_s=time.process_time() - cpu0)
    finally:
        sys.setswitchinterval(switch)


def measure(client: str, url: str, examples: list, rate: float, seconds: float, tokens: int, seed: int,
            server_pid: int) -> dict[str, Any]:
    """One Poisson run of ``client`` (``lean``, ``lean:K``, ``aiohttp``, ``locust``) at ``rate``."""
    n = max(50, int(rate * seconds))
    s0 = cpu_s(server_pid)
    if client == "floor":
        recs = wake_floor(rate, n, seed)
    elif client == "locust":
        recs = run_locust(url, rate, n, seed, tokens)
    else:
        name, _, procs = client.partition(":")
        spec = LoadSpec("server", rate=rate, num_requests=n, warmup=WARMUP, seed=seed, client_procs=int(procs or 1))
        # lean-loop: the lean client with every arrival handed to its loop (no send from the timer thread)
        target = HttpTarget(url, "marian-en-de", max_tokens=tokens, client=name.removesuffix("-loop"),
                            thread_send=not name.endswith("-loop"))
        recs = run(target, examples, spec)
    server_ms = (cpu_s(server_pid) - s0) * 1e3 / len(recs)
    s = S.summarize(recs)
    v = run_verdict(recs, "server")
    return {"sent": n, "failed": s.failed, "achieved": s.request_throughput,
            "p50_dispatch": s.median_dispatch_delay_ms, "p99_dispatch": s.p99_dispatch_delay_ms,
            "max_dispatch": s.max_dispatch_delay_ms,
            "p99_lag": v["p99_loop_lag_ms"] if client not in ("locust", "floor") else None,
            "p50_ttft": s.median_ttft_ms if client != "floor" else None,
            "p99_ttft": s.p99_ttft_ms if client != "floor" else None,
            "client_cpu": v["client_cpu_ms_per_request"] if client != "floor" else None,
            "server_cpu": server_ms if client != "floor" else None}


def median(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def dispatch_table(clients: list[str], rates: list[float], args: argparse.Namespace, url: str, examples: list,
                   server_pid: int, out: list[str]) -> dict[str, float]:
    """Section 1: every client at every rate, rounds interleaved; returns each client's best passing rate."""
    runs: dict[tuple[str, float], list[dict[str, Any]]] = {}
    saturated: dict[str, float] = {}
    for rnd in range(args.rounds):
        for rate in rates:
            order = clients[rnd % len(clients):] + clients[:rnd % len(clients)]  # rotate: no fixed order bias
            for client in order:
                if client in saturated and rate > saturated[client]:
                    continue
                r = measure(client, url, examples, rate, args.seconds, args.tokens, args.seed + rnd, server_pid)
                runs.setdefault((client, rate), []).append(r)
                print(f"  round {rnd + 1} {client} {rate:g} req/s: p99 dispatch {S.fmt(r['p99_dispatch'], '.3f')} ms, "
                      f"client CPU {S.fmt(r['client_cpu'], '.3f')} ms/req", file=sys.stderr, flush=True)
                if r["p99_dispatch"] is not None and r["p99_dispatch"] > SATURATED_MS and rnd == 0:
                    saturated[client] = rate
    out += ["| client | rate (req/s) | rounds | sent / round | failed | achieved (req/s) | p50 dispatch ms "
            "| p99 dispatch ms | max dispatch ms | p99 loop lag ms | p50 TTFT ms | p99 TTFT ms "
            "| client CPU ms/req | server CPU ms/req |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    best: dict[str, float] = {c: 0.0 for c in clients}
    for client in clients:
        for rate in rates:
            rs = runs.get((client, rate))
            if not rs:
                continue
            med = {k: median([r[k] for r in rs]) for k in rs[0]}
            failed = sum(r["failed"] for r in rs)
            if failed == 0 and med["p99_dispatch"] is not None and med["p99_dispatch"] < 1.0:
                best[client] = max(best[client], rate)
            out.append(f"| {client} | {rate:g} | {len(rs)} | {rs[0]['sent']} | {failed} "
                       f"| {S.fmt(med['achieved'], '.0f')} | {S.fmt(med['p50_dispatch'], '.3f')} "
                       f"| {S.fmt(med['p99_dispatch'], '.3f')} "
                       f"| {S.fmt(med['max_dispatch'], '.3f')} | {S.fmt(med['p99_lag'], '.3f')} "
                       f"| {S.fmt(med['p50_ttft'], '.2f')} | {S.fmt(med['p99_ttft'], '.2f')} "
                       f"| {S.fmt(med['client_cpu'], '.3f')} | {S.fmt(med['server_cpu'], '.3f')} |")
    return best


def transport(url: str, examples: list, args: argparse.Namespace, out: list[str]) -> None:
    """Section 2: served vs in-process TTFT at concurrency 1, interleaved blocks."""
    engine = create_engine(EngineConfig(engine="null", max_new_tokens=args.tokens))
    per_block = max(1, args.requests // args.blocks)
    served: dict[str, list[RequestRecord]] = {"lean": [], "aiohttp": []}
    inproc: list[RequestRecord] = []
    for b in range(args.blocks):
        exs = examples[b * per_block:(b + 1) * per_block]
        spec = LoadSpec("singlestream", num_requests=len(exs), warmup=5)
        for name in served:
            served[name] += run(HttpTarget(url, "marian-en-de", max_tokens=args.tokens, client=name), exs, spec)
        inproc += run(InprocTarget(engine, BatchConfig(max_batch_size=1), max_tokens=args.tokens), exs, spec)
    si = S.summarize(inproc)
    out += ["", "| concurrency 1 | n | p50 TTFT ms | p90 TTFT ms | p99 TTFT ms | p50 E2E ms |",
            "|---|---:|---:|---:|---:|---:|"]
    rows = [(f"served (HTTP, {k})", S.summarize(v)) for k, v in served.items()] + [("in-process (same batcher)", si)]
    for name, s in rows:
        out.append(f"| {name} | {s.completed} | {S.fmt(s.median_ttft_ms, '.3f')} | {S.fmt(s.p90_ttft_ms, '.3f')} "
                   f"| {S.fmt(s.p99_ttft_ms, '.3f')} | {S.fmt(s.median_e2el_ms, '.3f')} |")
    out.append("")
    for name, s in rows[:-1]:
        if s.median_ttft_ms is not None and si.median_ttft_ms is not None:
            diff = s.median_ttft_ms - si.median_ttft_ms
            out.append(f"{name} - in-process median TTFT: {diff:.3f} ms (goal < 2 ms) -> "
                       f"{'met' if diff < 2 else 'NOT met'}; ratio {s.median_ttft_ms / si.median_ttft_ms:.1f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="250,500,750,1000", help="Poisson rates to try (req/s)")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds of load per rate")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    ap.add_argument("--tokens", type=int, default=16, help="tokens per request (null engine)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the Poisson schedule (round r uses seed + r)")
    ap.add_argument("-n", "--requests", type=int, default=300, help="requests at concurrency 1, per target")
    ap.add_argument("--blocks", type=int, default=6, help="interleaved blocks at concurrency 1")
    ap.add_argument("--clients", default="floor,lean,lean-loop,lean:2,aiohttp,locust",
                    help="lean, lean:K (K client processes), lean-loop (arrivals handed to the loop, no send "
                         "from the timer thread), aiohttp, httpx, locust, and floor: a bare thread sleeping to "
                         "each scheduled time (the OS wake-up latency every client pays)")
    ap.add_argument("--server-batch", type=int, default=8, help="the null server's max batch size")
    ap.add_argument("--no-transport", action="store_true", help="skip section 2 (concurrency 1)")
    ap.add_argument("--out", default=None, help="also write the result file (header + tables) here")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    clients = args.clients.split(",")
    if "locust" in clients and not locust_available():
        print("locust is not installed: the Locust row is skipped (pip install 'locust>=2.40')", file=sys.stderr)
        clients.remove("locust")
    rates = [float(r) for r in args.rates.split(",")]
    command = "python bench/client.py " + " ".join(argv if argv is not None else sys.argv[1:])
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for mod in ("aiohttp", "httptools", "uvloop", "locust"):
        try:
            versions[mod] = version(mod)
        except PackageNotFoundError:
            pass
    out = [result_header(command, at_end=False, rounds=args.rounds, seconds_per_run=args.seconds,
                         tokens_per_request=args.tokens,
                         warmup_per_run=WARMUP, clients=", ".join(clients),
                         client_versions=", ".join(f"{k} {v}" for k, v in versions.items())), ""]
    examples = load_dataset("test", limit=400)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(port, args.tokens, args.server_batch)
    out += [f"Null engine, {args.tokens} tokens/request, `testbed serve` in its own process (batch <= "
            f"{args.server_batch}), loopback; client and server share the machine's cores. Medians over "
            f"{args.rounds} interleaved rounds; percentiles {S.PERCENTILE_METHOD}.", ""]
    try:
        best = dispatch_table(clients, rates, args, url, examples, proc.pid, out)
        out.append("")
        for client, rate in best.items():
            if client == "floor":
                continue
            out.append(f"- highest rate with median p99 dispatch delay < 1 ms and no failure, {client}: "
                       f"{rate:g} req/s (goal >= 500) -> {'met' if rate >= 500 else 'NOT met'}")
        out.append("- CPU ms/req: process CPU time over warm-up and run / requests (all client processes for "
                   "lean:K); 1000 / that bounds the rate one free core sustains, whatever the load")
        if not args.no_transport:
            transport(url, examples, args, out)
    finally:
        proc.terminate()
        proc.wait(10)
    out.append(f"\nload average {load_average()} at the end")
    text = "\n".join(out) + "\n"
    print(text)
    if args.out:
        write_text_atomic(Path(args.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
