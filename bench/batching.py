"""Served batching against the engines' own batches, and static against continuous batching.

For each configuration (default torch fp32, ONNX Runtime int8, CTranslate2 int8; Marian, 1 thread):

(a) **Offline**: the engine's own batch-32 throughput (``engine.generate`` over chunks of 32
    sentences, sentences/s) and the served Offline throughput of the same sentences through the
    in-process scheduler at max batch 32 (every request sent at t=0, static and, where the engine
    supports it, continuous batching): the ratio served / own.  Rounds interleave the
    configurations and the three measurements, alternating their order.
(b) **Peak** (``--find-peak``'s search: Poisson trials of at least ``--peak-min-queries``
    requests, the Server rule at p99) under one SLO, static vs continuous (engines that can join
    rows), the two searches back to back in alternating order per engine;
(c) p50 / p99 TTFT at half the static peak, both modes, back to back.

    python bench/batching.py                           # all three, writes bench/results/batching.md
    python bench/batching.py --configs onnxruntime:int8 -n 64 --rounds 1 --no-peak
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from testbed.client.bench import run_records  # noqa: E402
from testbed.client.loadgen import LoadSpec  # noqa: E402
from testbed.client.peak import PeakSearch, find_peak  # noqa: E402
from testbed.client.targets import InprocTarget  # noqa: E402
from testbed.clock import now_ns  # noqa: E402
from testbed.config import EngineConfig  # noqa: E402
from testbed.datasets import load_dataset  # noqa: E402
from testbed.engines.base import Engine  # noqa: E402
from testbed.engines.registry import create_engine, is_available  # noqa: E402
from testbed.io import write_text_atomic  # noqa: E402
from testbed.metrics import summary as S  # noqa: E402
from testbed.serve.batcher import BatchConfig  # noqa: E402
from testbed.signature import git_sha, result_header  # noqa: E402

BATCH = 32


def own_offline(engine: Engine, texts: list[str]) -> float:
    """Sentences/s of the engine's own batches of 32 (no scheduler)."""
    t0 = now_ns()
    for i in range(0, len(texts), BATCH):
        engine.generate(texts[i : i + BATCH])
    return len(texts) / ((now_ns() - t0) / 1e9)


def served_offline(engine: Engine, exs: list[Any], mode: str) -> tuple[float, dict[str, Any]]:
    """Requests/s of an Offline run through the in-process scheduler at max batch 32."""
    batch = BatchConfig(max_batch_size=BATCH, max_wait_ms=2.0, max_queue=100_000, batching=mode)
    stats: dict[str, Any] = {}
    recs = run_records(lambda: InprocTarget(engine, batch), exs, LoadSpec("offline", num_requests=len(exs),
                                                                          warmup=0), progress=False, stats=stats)
    summ = S.summarize(recs)
    if summ.failed:
        raise RuntimeError(f"{summ.failed} requests failed in the served Offline run ({mode})")
    return summ.request_throughput, stats


def _modes(engine: Engine) -> list[str]:
    return ["static", "continuous"] if engine.capabilities.continuous else ["static"]


def offline_table(engines: dict[str, Engine], exs: list[Any], rounds: int) -> tuple[list[str], dict[str, Any]]:
    texts = [ex.text for ex in exs]
    res: dict[str, dict[str, list[float]]] = {k: {} for k in engines}
    pads: dict[str, dict[str, Any]] = {k: {} for k in engines}
    for eng in engines.values():  # warm-up: one batch each way
        eng.generate(texts[:BATCH])
        for mode in _modes(eng):
            served_offline(eng, exs[:BATCH], mode)
    for r in range(rounds):
        order = list(engines.items()) if r % 2 == 0 else list(reversed(engines.items()))
        for key, eng in order:
            jobs = ["own", *_modes(eng)]
            for job in (jobs if r % 2 == 0 else list(reversed(jobs))):
                if job == "own":
                    v = own_offline(eng, texts)
                else:
                    v, stats = served_offline(eng, exs, job)
                    pads[key][job] = stats.get("padded_fraction")
                res[key].setdefault(job, []).append(v)
                print(f"  round {r + 1} {key} {job}: {v:.1f}/s", file=sys.stderr)
    lines = ["| configuration | engine decoding | own batch-32 (sent/s) | served static (req/s) | ratio | "
             "served continuous (req/s) | ratio | padded positions (static / continuous) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    out: dict[str, Any] = {}
    for key, eng in engines.items():
        own = statistics.median(res[key]["own"])
        st = statistics.median(res[key]["static"])
        co = statistics.median(res[key]["continuous"]) if "continuous" in res[key] else None
        out[key] = {"own": own, "static": st, "continuous": co}

        def pct(v: Any) -> str:
            return "-" if v is None else f"{100 * v:.1f} %"

        lines.append(f"| {key} | {eng.capabilities.batching} | {own:.1f} | {st:.1f} | {st / own:.2f} | "
                     + (f"{co:.1f} | {co / own:.2f}" if co is not None else "refused | -")
                     + f" | {pct(pads[key].get('static'))} / {pct(pads[key].get('continuous'))} |")
    return lines, out


def peak(engine: Engine, exs: list[Any], mode: str, slo: S.SLO, args: argparse.Namespace) -> dict[str, Any]:
    batch = BatchConfig(max_batch_size=BATCH, max_wait_ms=2.0, max_queue=4096, batching=mode)
    search = PeakSearch(start_rate=args.peak_start, trial_s=args.trial_s, min_queries=args.peak_min_queries,
                        max_trials=args.peak_trials, bisect_steps=args.peak_steps)
    spec = LoadSpec("server", rate=args.peak_start, warmup=8, seed=1)
    res = find_peak(lambda: InprocTarget(engine, batch), exs, spec, slo,
                    {"target": f"inproc {engine.config.label()} {batch.label()}"}, None, progress=False, search=search,
                    on_trial=lambda t: print(f"    {mode} trial {t.get('rate')}: ok={t.get('ok')}", file=sys.stderr))
    return res


def ttft_at(engine: Engine, exs: list[Any], mode: str, rate: float, n: int) -> dict[str, float | None]:
    batch = BatchConfig(max_batch_size=BATCH, max_wait_ms=2.0, max_queue=4096, batching=mode)
    recs = run_records(lambda: InprocTarget(engine, batch), exs,
                       LoadSpec("server", rate=rate, num_requests=n, warmup=8, seed=2), progress=False)
    summ = S.summarize(recs)
    return {"p50": summ.median_ttft_ms, "p99": summ.p99_ttft_ms, "failed": summ.failed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="torch:fp32,onnxruntime:int8,ctranslate2:int8")
    ap.add_argument("--model", default="marian-en-de")
    ap.add_argument("-n", type=int, default=128, help="test sentences (Offline runs and the load's examples)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--slo", default="ttft=500,e2e=2000", help="the peak search's SLO (ms)")
    ap.add_argument("--no-peak", action="store_true", help="only the Offline table")
    ap.add_argument("--peak-start", type=float, default=8.0)
    ap.add_argument("--trial-s", type=float, default=5.0)
    ap.add_argument("--peak-min-queries", type=int, default=None)
    ap.add_argument("--peak-trials", type=int, default=6)
    ap.add_argument("--peak-steps", type=int, default=2)
    ap.add_argument("--out", default="bench/results/batching.md")
    args = ap.parse_args(argv)
    git_sha()
    command = "python bench/batching.py " + " ".join(argv if argv is not None else sys.argv[1:])
    exs = load_dataset("test", limit=args.n)
    engines: dict[str, Engine] = {}
    for spec in args.configs.split(","):
        name, precision = spec.split(":")
        ok, why = is_available(name)
        if not ok:
            print(f"skipping {spec}: {why}", file=sys.stderr)
            continue
        engines[spec] = create_engine(EngineConfig(engine=name, model=args.model, precision=precision, threads=1,
                                                   max_new_tokens=256))
    print("offline ...", file=sys.stderr)
    lines, offline = offline_table(engines, exs, args.rounds)
    md = ["# Served batching vs the engines' own batches; static vs continuous", "",
          result_header(command, rounds=args.rounds, requests=f"{len(exs)} of `test`", max_batch=BATCH, threads=1),
          "", "## (a) Offline at max batch 32: served / the engine's own batch-32 throughput", "",
          "Served: every request sent at t = 0 through the in-process scheduler (the server's, without HTTP). "
          "Medians over the rounds; rounds interleave configurations and measurements, alternating order.", "",
          *lines]
    if not args.no_peak:
        slo = S.SLO.parse(args.slo)
        md += ["", f"## (b) Peak Poisson rate under p99 {args.slo} (ms), static vs continuous; (c) TTFT at half "
                   "the static peak", "",
               "Find-peak search per mode (`testbed bench --find-peak`'s: Server rule at p99, trials of at least "
               f"{PeakSearch(min_queries=args.peak_min_queries).floor} requests); the two searches back to back, "
               "alternating order per engine. A peak is the highest rate whose trial met the SLO with a valid tail "
               "claim (`-`: none found in the search's range).", "",
               "| configuration | static peak (req/s) | continuous peak (req/s) | ratio | rate for (c) | "
               "TTFT p50 / p99 static (ms) | TTFT p50 / p99 continuous (ms) |", "|---|---:|---:|---:|---:|---|---|"]
        for k, (key, eng) in enumerate(engines.items()):
            modes = _modes(eng)
            if len(modes) < 2:
                md.append(f"| {key} | (static only: {eng.capabilities.join_refusal or 'no continuous batching'}) "
                          "| - | - | - | - | - |")
                continue
            print(f"peak {key} ...", file=sys.stderr)
            peaks: dict[str, Any] = {}
            for mode in (modes if k % 2 == 0 else list(reversed(modes))):
                peaks[mode] = peak(eng, exs, mode, slo, args).get("peak_rate")
            ps, pc = peaks["static"], peaks["continuous"]
            half = (ps or pc or args.peak_start) / 2
            n = max(200, int(half * 10))
            tt = {m: ttft_at(eng, exs, m, half, n) for m in modes}

            def f(v: Any) -> str:
                return "-" if v is None else f"{v:.1f}"

            md.append(f"| {key} | {f(ps)} | {f(pc)} | {(pc / ps) if ps and pc else float('nan'):.2f} | "
                      f"{half:.1f} ({n} req) | {f(tt['static']['p50'])} / {f(tt['static']['p99'])} | "
                      f"{f(tt['continuous']['p50'])} / {f(tt['continuous']['p99'])} |")
    for eng in engines.values():
        eng.close()
    text = "\n".join(md) + "\n"
    print(text)
    write_text_atomic(Path(args.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
