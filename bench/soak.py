"""Soak: a `testbed serve` it starts, under steady Poisson load for a long time; memory, fds, errors.

Starts `testbed serve` in its own process (127.0.0.1, a free port, default limits), then sends
one seeded Poisson stream at --rate for --duration seconds (after --warmup requests, excluded).
Every --sample seconds a sampler thread reads the server's resident memory (VmRSS), its open
file descriptors (/proc/PID/fd) and `/metrics` (responses by status, open connections, queue
depth).  The Markdown section (result_header first) has one row per minute (latency of the
requests scheduled in it, the last sample's RSS / fds, the maximum), then the totals: requests,
failures by error, 5xx responses the server counted, the RSS growth from the first minute to the
end, and whether `/health` still answered.  Exit status 1 when the server died, stopped
answering, or counted a 5xx.

    python bench/soak.py --rate 4.5 --duration 600 --append bench/results/serving.md   # marian-en-de
    python bench/soak.py --engine null --max-new-tokens 16 --rate 300 --duration 60
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from testbed.client.loadgen import LoadSpec, run
from testbed.client.targets import HttpTarget
from testbed.datasets import load_dataset
from testbed.io import write_text_atomic
from testbed.metrics import summary as S
from testbed.serve.run import free_port
from testbed.signature import git_sha, result_header


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scrape(url: str) -> dict[str, float]:
    """``/metrics`` -> {series: value} for the series the soak reports."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(("testbed_requests_total{", "testbed_open_connections ", "testbed_queue_depth ",
                            "testbed_rejections_total{", "testbed_connection_events_total{")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


class Sampler(threading.Thread):
    """Every ``every`` seconds: (t, RSS MB, open fds, /metrics) of the server process."""

    def __init__(self, pid: int, url: str, every: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.url, self.every = pid, url, every
        self.samples: list[tuple[float, float, int, dict[str, float]]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def take(self) -> None:
        try:
            self.samples.append((time.monotonic() - self.t0, rss_mb(self.pid), open_fds(self.pid), scrape(self.url)))
        except (OSError, httpx.HTTPError) as exc:
            self.errors.append(f"{time.monotonic() - self.t0:.0f}s: {type(exc).__name__}: {exc}")

    def run(self) -> None:
        self.take()
        while not self.stop.wait(self.every):
            self.take()


def start_server(args: argparse.Namespace, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "testbed.cli", "serve", "--model", args.model, "--engine", args.engine,
           "--precision", args.precision, "--threads", str(args.threads), "--port", str(port),
           "--max-batch-size", str(args.max_batch_size), "--max-queue", str(args.max_queue), "--log-level", "warning"]
    if args.max_new_tokens:
        cmd += ["--max-new-tokens", str(args.max_new_tokens)]
    proc = subprocess.Popen(cmd, stderr=log.open("wb"))
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit(f"server did not start; its log: {log}")
        time.sleep(0.3)


def minute_rows(recs: Any, samples: list[tuple[float, float, int, dict[str, float]]], minutes: int) -> list[str]:
    live = [r for r in recs if not r.warmup]
    t0 = min(r.schedule_ns for r in live)
    rows = []
    for m in range(minutes):
        part = [r for r in live if m * 60e9 <= r.schedule_ns - t0 < (m + 1) * 60e9]
        if not part:
            continue
        s = S.summarize(part)
        inside = [x for x in samples if x[0] < samples[0][0] + (m + 1) * 60 + 1] or samples[:1]
        rows.append(f"| {m + 1} | {s.completed + s.failed} | {s.failed} | {S.fmt(s.median_ttft_ms, '.1f')} "
                    f"| {S.fmt(s.p99_ttft_ms, '.1f')} | {S.fmt(s.median_e2el_ms, '.1f')} "
                    f"| {S.fmt(s.p99_e2el_ms, '.1f')} | {inside[-1][1]:.0f} | {inside[-1][2]} "
                    f"| {inside[-1][3].get('testbed_open_connections', 0):.0f} |")
    return rows


def five_xx(metrics: dict[str, float]) -> int:
    return int(sum(v for k, v in metrics.items() if k.startswith("testbed_requests_total{") and 'status="5' in k))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default="marian-en-de")
    ap.add_argument("--engine", default="torch")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--rate", type=float, required=True, help="Poisson rate (req/s), e.g. the peak of --find-peak")
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples (default 10)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset", default="test")
    ap.add_argument("--append", default=None, help="a Markdown file to append the section to (atomically)")
    ap.add_argument("--peak-note", default="", help="where the rate comes from (printed in the section)")
    args = ap.parse_args(argv)

    sha = git_sha()  # at the start: later edits cannot relabel the run
    command = "python bench/soak.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(f"/tmp/testbed-soak-{port}.log")
    proc = start_server(args, port, log)
    sampler = Sampler(proc.pid, url, args.sample)
    examples = load_dataset(args.dataset)
    sampler.start()
    try:
        spec = LoadSpec("server", rate=args.rate, duration_s=args.duration, warmup=args.warmup, seed=args.seed)
        recs = run(HttpTarget(url, args.model), examples, spec)
        sampler.stop.set()
        sampler.join(30)
        sampler.take()
        alive = proc.poll() is None and httpx.get(f"{url}/health", timeout=10).status_code == 200
    finally:
        sampler.stop.set()
        proc.terminate()
        proc.wait(15)
    s = S.summarize(recs)
    samples = sampler.samples
    first_min = [x for x in samples if x[0] >= 60] or samples
    end = samples[-1]
    internal = sum("internal error" in line for line in log.read_text(errors="replace").splitlines())
    n_5xx = five_xx(end[3])
    head = result_header(command, rate=f"{args.rate:g} req/s Poisson (seed {args.seed}) {args.peak_note}".strip(),
                         duration=f"{args.duration:g} s after {args.warmup} warm-up requests (excluded)",
                         server=f"testbed serve --model {args.model} --engine {args.engine} --precision "
                                f"{args.precision} --threads {args.threads} --max-batch-size {args.max_batch_size} "
                                f"--max-queue {args.max_queue} (default limits)",
                         sampling=f"every {args.sample:g} s: VmRSS, /proc/PID/fd, /metrics ({len(samples)} samples)")
    head = re.sub(r"^- git: .*$", f"- git: {sha}", head, count=1, flags=re.M)  # the tree the run started from
    lines = [f"## Soak: {args.model} {args.engine}/{args.precision}, {args.rate:g} req/s for "
             f"{args.duration:g} s (`bench/soak.py`)", "", head,
             "| minute | requests | failed | p50 TTFT ms | p99 TTFT ms | p50 E2E ms | p99 E2E ms | server RSS MB "
             "| open fds | open connections |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             *minute_rows(recs, samples, int(args.duration // 60) + 1), "",
             f"- requests: {s.completed + s.failed} ({s.completed} completed, {s.failed} failed: "
             f"{dict(s.errors) or 'no errors'}); achieved {S.fmt(s.request_throughput, '.2f')} req/s",
             f"- TTFT p50 / p99 {S.fmt(s.median_ttft_ms, '.1f')} / {S.fmt(s.p99_ttft_ms, '.1f')} ms; E2E p50 / p99 "
             f"{S.fmt(s.median_e2el_ms, '.1f')} / {S.fmt(s.p99_e2el_ms, '.1f')} ms (numpy linear percentiles)",
             f"- server RSS: {samples[0][1]:.0f} MB at the start, {first_min[0][1]:.0f} MB after the first minute, "
             f"{end[1]:.0f} MB at the end (max {max(x[1] for x in samples):.0f} MB; growth after the first minute "
             f"{end[1] - first_min[0][1]:+.0f} MB)",
             f"- open fds: {samples[0][2]} at the start, max {max(x[2] for x in samples)}, {end[2]} at the end",
             f"- 5xx responses counted by the server: {n_5xx}; 'internal error' lines in its log: {internal}; "
             f"sampler errors: {len(sampler.errors)}",
             f"- server alive and answering /health at the end: {alive}", ""]
    text = "\n".join(lines)
    print(text)
    if args.append:
        p = Path(args.append)
        old = p.read_text(encoding="utf-8") if p.exists() else ""
        write_text_atomic(p, old.rstrip("\n") + "\n\n" + text)
    return 0 if alive and n_5xx == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
