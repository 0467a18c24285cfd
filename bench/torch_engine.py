"""Torch engines: engine x precision x threads, measured side by side in one run.

For each configuration: load once, warm up, then per-sentence greedy latency at batch 1
(SingleStream) over the same sentences, in interleaved rounds (round r runs every
configuration on sentence slice r), so drift of a noisy machine hits all configurations alike.
Prints per configuration the median E2E / TTFT / TPOT, the ratio of median E2E to the first
configuration's (torch fp32 at the default thread count), and BLEU / chrF on the sentences run.
A configuration is ``[engine/]precision:threads`` (engine default ``torch``; ``torch-static`` and
``torch-compile`` are the static-cache engines); its load time includes torch.compile's compilation
(warm-up, excluded from every latency) and is printed as a fact in the header.

    python bench/torch_engine.py                       # marian-en-de, 200 test sentences
    python bench/torch_engine.py --model smollm2-135m-instruct --dataset chat -n 30 --max-new-tokens 48
    python bench/torch_engine.py --configs torch/fp32:1,torch-static/fp32:1,torch-compile/fp32:1
"""

from __future__ import annotations

import argparse
import sys
import time

from testbed.client.inproc import request_of, run_one
from testbed.config import EngineConfig
from testbed.datasets import load_dataset
from testbed.engines.registry import create_engine
from testbed.metrics import summary as S
from testbed.metrics.accuracy import score
from testbed.signature import result_header


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="marian-en-de")
    ap.add_argument("--dataset", default="test")
    ap.add_argument("-n", "--num", type=int, default=200, help="sentences (default 200)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--configs", default="fp32:2,fp32:1,bf16:2,int8:2,int8:1",
                    help="comma-separated [engine/]precision:threads (the first is the ratio baseline)")
    args = ap.parse_args(argv)

    examples = load_dataset(args.dataset, limit=args.num)
    configs = []
    for item in args.configs.split(","):
        head, _, thr = item.partition(":")
        engine, _, prec = head.rpartition("/")
        configs.append(EngineConfig(model=args.model, engine=engine or "torch", precision=prec,
                                    threads=int(thr) if thr else None,
                                    max_new_tokens=args.max_new_tokens))
    engines = {}
    load_s: dict[str, str] = {}
    for cfg in configs:
        t0 = time.perf_counter()
        eng = create_engine(cfg)
        for ex in examples[: args.warmup]:
            run_one(eng, request_of(ex), warmup=True)
        engines[cfg.label()] = eng
        load_s[cfg.label()] = f"{time.perf_counter() - t0:.0f} s"
        print(f"loaded + warmed {cfg.label()} in {load_s[cfg.label()]}", file=sys.stderr)

    records: dict[str, list] = {k: [None] * len(examples) for k in engines}
    slices = [range(r, len(examples), args.rounds) for r in range(args.rounds)]
    for r, sl in enumerate(slices):
        for label, eng in engines.items():
            if eng.config.threads:  # the thread count is process-global in torch: set it per turn
                import torch

                torch.set_num_threads(eng.config.threads)
            for i in sl:
                records[label][i] = run_one(eng, request_of(examples[i]))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    base = None
    refs = [ex.reference for ex in examples]
    print("\n" + result_header("python bench/torch_engine.py " + " ".join(sys.argv[1:]), rounds=args.rounds,
                               requests=f"{len(examples)} of `{args.dataset}`", model=args.model,
                               load_and_warmup=", ".join(f"{k} {v}" for k, v in load_s.items())))
    print("Batch 1, greedy, configurations interleaved request by request.\n")
    print("| config | median E2E ms | ratio to first | median TTFT ms | median TPOT ms | failed | BLEU | chrF |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, recs in records.items():
        e2e, ttft, tpot = (S.percentiles(map(fn, recs), ps=(50,))["p50"] for fn in (S.e2e_ms, S.ttft_ms, S.tpot_ms))
        if e2e is None:
            print(f"| {label} | all requests failed | | | | {len(recs)} | | |")
            continue
        failed = sum(1 for r in recs if not r.ok)
        base = base or e2e
        acc = {"bleu": float("nan"), "chrf": float("nan")}
        if all(x is not None for x in refs):
            acc = score([r.output or "" for r in recs], [str(x) for x in refs])
        print(f"| {label} | {e2e:.2f} | {e2e / base:.2f} | {S.fmt(ttft)} | {S.fmt(tpot)} | {failed} | "
              f"{acc['bleu']:.2f} | {acc['chrf']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
