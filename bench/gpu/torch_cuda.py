"""GPU check: the torch engine on CUDA (fp32 / fp16 / bf16) against CPU fp32, side by side.

Run on a machine with a CUDA GPU (see bench/gpu/run.sh).  For each configuration: SingleStream
(batch 1, greedy, after warm-up) on the first N test sentences -> median/p90 E2E, TTFT, TPOT;
Offline (batches of B over the whole test set) -> sentences/s and output tokens/s; BLEU/chrF
against the references, and exact-output agreement with CUDA fp32 on the SingleStream slice.
Prints a Markdown table, a row as each configuration finishes; ratios are to the first configuration
(CPU fp32 by default) measured in the same run.  A configuration is ``[engine/]device:precision``:

    python bench/gpu/torch_cuda.py --no-offline --configs cuda:fp32,torch-static/cuda:fp32,torch-static/cuda:bf16
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from testbed.client.inproc import request_of, run_one
from testbed.clock import now_ns
from testbed.config import EngineConfig
from testbed.datasets import load_dataset
from testbed.engines.base import GenerationRequest
from testbed.engines.registry import create_engine
from testbed.metrics import summary as S
from testbed.metrics.accuracy import score
from testbed.signature import result_header


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="marian-en-de")
    ap.add_argument("-n", type=int, default=300, help="SingleStream sentences (default 300)")
    ap.add_argument("--batch", type=int, default=64, help="Offline batch size (default 64)")
    ap.add_argument("--configs", default="cpu:fp32,cuda:fp32,cuda:fp16,cuda:bf16",
                    help="comma-separated [engine/]device:precision (engine default torch); the first is the "
                         "ratio baseline")
    ap.add_argument("--offline-cpu", action="store_true", help="also run Offline on CPU (slow)")
    ap.add_argument("--no-offline", action="store_true", help="SingleStream only")
    args = ap.parse_args(argv)

    import torch

    print(f"torch {torch.__version__}, cuda {torch.version.cuda}, "
          f"device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}", file=sys.stderr)
    examples = load_dataset("test")
    single = examples[: args.n]
    # rows are printed as each configuration finishes, so a step cut by its timeout keeps what it measured
    print("\n" + result_header("python bench/gpu/torch_cuda.py " + " ".join(sys.argv[1:]), at_end=False, rounds=1,
                               model=args.model, gpu=_gpu_name()))
    print(f"SingleStream on the first {len(single)} test sentences (batch 1, greedy, 10 warm-up excluded); "
          f"Offline batch {args.batch} over all {len(examples)} (single-stream engines: not run). "
          "Load includes warm-up (CUDA graph capture, torch.compile).\n")
    print("| config | load s | E2E p50 ms | E2E p90 ms | ratio to first | TTFT p50 ms | TPOT p50 ms | failed | BLEU "
          "| chrF | same output as cuda fp32 | Offline |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|", flush=True)
    base: list[float] = []
    outputs: dict[str, list[str]] = {}
    for item in args.configs.split(","):
        head, _, precision = item.partition(":")
        engine, _, device = head.rpartition("/")
        cfg = EngineConfig(model=args.model, engine=engine or "torch", device=device, precision=precision)
        try:
            t0 = now_ns()
            eng = create_engine(cfg)
            load_s = (now_ns() - t0) / 1e9
        except Exception as e:  # a configuration that cannot load is reported, the others still run
            print(f"| {cfg.label()} | failed to load: {type(e).__name__}: {str(e)[:300]} |", flush=True)
            continue
        print(_row(args, eng, cfg, single, examples, load_s, base, outputs), flush=True)
        eng.close()
    return 0


def _row(args: argparse.Namespace, eng: Any, cfg: EngineConfig, single: list, examples: list, load_s: float,
         base: list[float], outputs: dict[str, list[str]]) -> str:
    for i in range(10):
        run_one(eng, request_of(single[i % len(single)]), warmup=True)
    recs = [run_one(eng, request_of(ex)) for ex in single]
    outputs[cfg.label()] = [r.output or "" for r in recs]
    acc = score(outputs[cfg.label()], [str(e.reference) for e in single])
    p = {name: S.percentiles(map(fn, recs), ps=(50, 90)) for name, fn in
         (("e2e", S.e2e_ms), ("ttft", S.ttft_ms), ("tpot", S.tpot_ms))}
    offline = "skipped"
    if eng.capabilities.batching == "lockstep":
        offline = "n/a (single stream)"
    elif not args.no_offline and (cfg.device == "cuda" or args.offline_cpu):
        offline = _offline(eng, examples, args.batch)
    failed = sum(1 for r in recs if not r.ok)
    ref = outputs.get("torch/fp32/cuda")
    same = "n/a" if ref is None else f"{sum(a == b for a, b in zip(outputs[cfg.label()], ref)) / len(ref):.1%}"
    e2e = p["e2e"]["p50"]
    if e2e and not base:
        base.append(e2e)
    ratio = f"{e2e / base[0]:.3f}" if e2e and base else "n/a"
    print(f"{cfg.label()} done", file=sys.stderr)
    return (f"| {cfg.label()} | {load_s:.1f} | {S.fmt(e2e)} | {S.fmt(p['e2e']['p90'])} | {ratio} | "
            f"{S.fmt(p['ttft']['p50'])} | {S.fmt(p['tpot']['p50'])} | {failed} | {acc['bleu']:.2f} | "
            f"{acc['chrf']:.2f} | {same} | {offline} |")


def _offline(eng: Any, examples: list, batch: int) -> str:
    reqs = [GenerationRequest(text=e.text, request_id=e.id) for e in examples]
    eng.generate(reqs[:batch])  # warm-up batch
    t0 = now_ns()
    n_tok = 0
    hyps: list[str] = []
    for k in range(0, len(reqs), batch):
        for g in eng.generate(reqs[k: k + batch]):
            n_tok += len(g.token_ids)
            hyps.append(g.text)
    dt = (now_ns() - t0) / 1e9
    full = score(hyps, [str(e.reference) for e in examples])
    return f"{len(reqs) / dt:.1f} sent/s, {n_tok / dt:.0f} tok/s, BLEU(all {len(reqs)}) {full['bleu']:.2f}"


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


if __name__ == "__main__":
    raise SystemExit(main())
