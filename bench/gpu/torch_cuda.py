"""GPU check: the torch engine on CUDA (fp32 / fp16 / bf16) against CPU fp32, side by side.

Run on a machine with a CUDA GPU (see bench/gpu/run.sh).  For each configuration: SingleStream
(batch 1, greedy, after warm-up) on the first N test sentences -> median/p90 E2E, TTFT, TPOT;
Offline (batches of B over the whole test set) -> sentences/s and output tokens/s; BLEU/chrF
against the references, and exact-output agreement with CUDA fp32 on the SingleStream slice.
Prints a Markdown table; ratios are to CPU fp32 measured in the same run.
"""

from __future__ import annotations

import argparse
import sys

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
    ap.add_argument("--configs", default="cpu:fp32,cuda:fp32,cuda:fp16,cuda:bf16")
    ap.add_argument("--offline-cpu", action="store_true", help="also run Offline on CPU (slow)")
    args = ap.parse_args(argv)

    import torch

    print(f"torch {torch.__version__}, cuda {torch.version.cuda}, "
          f"device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}", file=sys.stderr)
    examples = load_dataset("test")
    single = examples[: args.n]
    refs_single = [str(e.reference) for e in single]
    rows = []
    outputs: dict[str, list[str]] = {}
    for spec in args.configs.split(","):
        device, precision = spec.split(":")
        cfg = EngineConfig(model=args.model, device=device, precision=precision)
        try:
            eng = create_engine(cfg)
        except Exception as e:  # a configuration that cannot load is reported, the others still run
            rows.append((cfg.label(), f"failed to load: {type(e).__name__}: {e}"))
            continue
        for i in range(10):
            run_one(eng, request_of(single[i % len(single)]), warmup=True)
        recs = [run_one(eng, request_of(ex)) for ex in single]
        outputs[cfg.label()] = [r.output or "" for r in recs]
        acc = score(outputs[cfg.label()], refs_single)
        p = {name: S.percentiles(map(fn, recs), ps=(50, 90)) for name, fn in
             (("e2e", S.e2e_ms), ("ttft", S.ttft_ms), ("tpot", S.tpot_ms))}
        offline = "skipped"
        if device == "cuda" or args.offline_cpu:
            reqs = [GenerationRequest(text=e.text, request_id=e.id) for e in examples]
            eng.generate(reqs[: args.batch])  # warm-up batch
            t0 = now_ns()
            n_tok = 0
            hyps: list[str] = []
            for k in range(0, len(reqs), args.batch):
                for g in eng.generate(reqs[k: k + args.batch]):
                    n_tok += len(g.token_ids)
                    hyps.append(g.text)
            dt = (now_ns() - t0) / 1e9
            full = score(hyps, [str(e.reference) for e in examples])
            offline = (f"{len(reqs) / dt:.1f} sent/s, {n_tok / dt:.0f} tok/s, "
                       f"BLEU(all {len(reqs)}) {full['bleu']:.2f}")
        failed = sum(1 for r in recs if not r.ok)
        rows.append((cfg.label(), p, acc, failed, offline))
        eng.close()
        print(f"{cfg.label()} done", file=sys.stderr)

    base = next((r[1]["e2e"]["p50"] for r in rows if isinstance(r[1], dict)), None)
    ref = outputs.get("torch/fp32/cuda")
    print("\n" + result_header("python bench/gpu/torch_cuda.py " + " ".join(sys.argv[1:]), rounds=1,
                               model=args.model, gpu=_gpu_name()))
    print(f"SingleStream on the first {len(single)} test sentences (batch 1, greedy, 10 warm-up excluded); "
          f"Offline batch {args.batch} over all {len(examples)}.\n")
    print("| config | E2E p50 ms | E2E p90 ms | ratio to first | TTFT p50 ms | TPOT p50 ms | failed | BLEU | chrF "
          "| same output as cuda fp32 | Offline |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        if not isinstance(row[1], dict):
            print(f"| {row[0]} | {row[1]} |")
            continue
        label, p, acc, failed, offline = row
        same = "n/a"
        if ref is not None:
            same = f"{sum(a == b for a, b in zip(outputs[label], ref)) / len(ref):.1%}"
        e2e = p["e2e"]["p50"]
        ratio = f"{e2e / base:.3f}" if e2e and base else "n/a"
        print(f"| {label} | {S.fmt(e2e)} | {S.fmt(p['e2e']['p90'])} | {ratio} | {S.fmt(p['ttft']['p50'])} | "
              f"{S.fmt(p['tpot']['p50'])} | {failed} | {acc['bleu']:.2f} | {acc['chrf']:.2f} | {same} | {offline} |")
    return 0


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


if __name__ == "__main__":
    raise SystemExit(main())
