"""Pruning: what each kind buys in latency and costs in BLEU, measured side by side in one run.

For each configuration (engine / precision / pruning spec): build or reuse the pruned checkpoint,
load, warm up, then per-sentence greedy latency at batch 1 (SingleStream) over the same test
sentences in interleaved rounds (round r runs every configuration on sentence slice r, so drift
of a noisy machine hits all alike).  Prints the median E2E / TTFT / TPOT, the ratio of median
E2E to the first configuration (unpruned), the parameter count, the sparsity of the pruned
Linear weights, and BLEU / chrF on the sentences run.

    python bench/pruning.py        # torch fp32: none, unstructured 0.3/0.5, structured 0.25/0.5
    python bench/pruning.py --configs torch:fp32:none,ctranslate2:int8:none,ctranslate2:int8:structured:0.5
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from testbed.client.inproc import request_of, run_one
from testbed.config import EngineConfig
from testbed.datasets import load_dataset
from testbed.engines.registry import create_engine
from testbed.metrics import summary as S
from testbed.metrics.accuracy import score
from testbed.prune import pruning_stats
from testbed.signature import result_header

DEFAULT = ("torch:fp32:none,torch:fp32:unstructured:0.3,torch:fp32:unstructured:0.5,"
           "torch:fp32:structured:0.25,torch:fp32:structured:0.5")


def checkpoint_params(path: Path) -> int:
    """Parameters stored in a checkpoint's safetensors files (tied weights are stored once)."""
    from safetensors import safe_open

    n = 0
    for f in path.glob("*.safetensors"):
        with safe_open(str(f), "np") as st:
            for k in st.keys():
                n += math.prod(st.get_slice(k).get_shape())
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="marian-en-de")
    ap.add_argument("--dataset", default="test")
    ap.add_argument("-n", "--num", type=int, default=200, help="sentences (default 200)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--configs", default=DEFAULT,
                    help="comma-separated engine:precision:pruning (the first is the ratio baseline)")
    args = ap.parse_args(argv)

    examples = load_dataset(args.dataset, limit=args.num)
    configs = []
    for item in args.configs.split(","):
        engine, prec, pruning = item.split(":", 2)
        configs.append(EngineConfig(model=args.model, engine=engine, precision=prec, pruning=pruning,
                                    threads=args.threads, max_new_tokens=args.max_new_tokens))
    engines = {}
    for cfg in configs:
        t0 = time.perf_counter()
        eng = create_engine(cfg)
        for ex in examples[: args.warmup]:
            run_one(eng, request_of(ex), warmup=True)
        engines[cfg.label()] = eng
        print(f"loaded + warmed {cfg.label()} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    records: dict[str, list] = {k: [None] * len(examples) for k in engines}
    for r in range(args.rounds):
        for label, eng in engines.items():
            if eng.name == "torch" and eng.config.threads:  # process-global in torch: set it per turn
                import torch

                torch.set_num_threads(eng.config.threads)
            for i in range(r, len(examples), args.rounds):
                records[label][i] = run_one(eng, request_of(examples[i]))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    refs = [ex.reference for ex in examples]
    print("\n" + result_header("python bench/pruning.py " + " ".join(sys.argv[1:]), rounds=args.rounds,
                               requests=f"{len(examples)} of `{args.dataset}`", model=args.model,
                               threads=args.threads or "default"))
    print("Batch 1, greedy, configurations interleaved request by request.\n")
    print("| config | stored params | pruned-weight sparsity | median E2E ms | ratio to first | median TTFT ms | "
          "median TPOT ms | failed | BLEU | chrF |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    for label, recs in records.items():
        eng = engines[label]
        ckpt = getattr(eng, "checkpoint_path", None) or eng.model_info.local_path()
        stats = pruning_stats(ckpt) or {}
        params_s = f"{checkpoint_params(ckpt) / 1e6:.2f}M"
        sparsity = f"{stats['sparsity']:.2f}" if "sparsity" in stats else ""
        e2e, ttft, tpot = (S.percentiles(map(fn, recs), ps=(50,))["p50"] for fn in (S.e2e_ms, S.ttft_ms, S.tpot_ms))
        if e2e is None:
            print(f"| {label} | {params_s} | {sparsity} | all requests failed | | | | {len(recs)} | | |")
            continue
        failed = sum(1 for rec in recs if not rec.ok)
        base = base or e2e
        acc = {"bleu": float("nan"), "chrf": float("nan")}
        if all(x is not None for x in refs):
            acc = score([rec.output or "" for rec in recs], [str(x) for x in refs])
        print(f"| {label} | {params_s} | {sparsity} | {e2e:.2f} | {e2e / base:.2f} | {S.fmt(ttft)} | {S.fmt(tpot)} | "
              f"{failed} | {acc['bleu']:.2f} | {acc['chrf']:.2f} |")
    for eng in engines.values():
        eng.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
