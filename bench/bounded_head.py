"""The bounded greedy head (int4-lossless, testbed/export/lossless.py) against the fp32 head it replaces.

One int4-lossless artefact, two ways to choose each token, in one process, interleaved prompt by
prompt (order alternating), batch 1, 1 thread:

* ``bounded``: the engine's default on the CPU; the session leaves the fp32 logits out and the graph's
  head picks the argmax among the candidates its bound leaves;
* ``fp32 head``: the same graph's fp32 logits, the argmax taken in numpy over them (what the artefact
  did before the bounded head: ``SessionSettings(bounded_head=False)``).

Printed: each prompt's TPOT (median over ``--rounds``) for both, the median of the per-prompt ratios,
whether the tokens are the same; and, from the whole graph run over the same steps with the head's
intermediate tensors as outputs, how many candidates the bound leaves per step, and the largest
``|approx - fp32 logit| / bound`` seen (it must stay <= 1; the tests hold it there too).

    python bench/bounded_head.py                       # 24 chat prompts, 32 new tokens, 5 rounds
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from testbed.clock import now_ns  # noqa: E402
from testbed.config import EngineConfig  # noqa: E402
from testbed.datasets import load_dataset  # noqa: E402
from testbed.engines.base import GenerationRequest  # noqa: E402
from testbed.engines.registry import create_engine  # noqa: E402
from testbed.export.lossless import trace_bounded_head  # noqa: E402
from testbed.signature import git_sha, write_result  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _decode(m: Any, ids: np.ndarray, new: int) -> tuple[list[int], float]:
    """Greedy tokens of one prompt and the TPOT in ms (first token to last over the steps between)."""
    stamps, toks = [], []
    for nxt in m.greedy(ids, np.ones_like(ids), new, m.meta["banned"]):
        stamps.append(now_ns())
        toks.append(int(nxt[0]))
    return toks, (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1) / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("-n", type=int, default=24, help="chat prompts (default 24)")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per prompt (default 32)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "bounded_head.md"))
    args = ap.parse_args(argv)
    git_sha()
    from testbed.engines.onnxruntime.runner import OrtModel, SessionSettings

    eng = create_engine(EngineConfig(model=args.model, engine="onnxruntime", precision="int4-lossless", threads=1,
                                     max_new_tokens=args.tokens)).load()
    art = eng.artifact
    prompts = [np.array([eng.encode_input(GenerationRequest(text=ex.text, messages=ex.messages))], dtype=np.int64)
               for ex in load_dataset("chat", limit=args.n)]
    eng.close()
    models = {"bounded": OrtModel(art, SessionSettings(threads=1, greedy_in_graph=False)),
              "fp32 head": OrtModel(art, SessionSettings(threads=1, greedy_in_graph=False, bounded_head=False))}
    assert models["bounded"].logits_dropped and not models["fp32 head"].logits_dropped
    for m in models.values():  # warm-up (excluded)
        _decode(m, prompts[0], args.tokens)
    tpot: dict[str, list[list[float]]] = {k: [[] for _ in prompts] for k in models}
    toks: dict[str, list[list[int]]] = {k: [[] for _ in prompts] for k in models}
    for r in range(args.rounds):
        for i, ids in enumerate(prompts):
            order = list(models) if (r + i) % 2 == 0 else list(reversed(models))
            for k in order:
                toks[k][i], ms = _decode(models[k], ids, args.tokens)
                tpot[k][i].append(ms)
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    med = {k: [statistics.median(v) for v in tpot[k]] for k in models}
    ratios = [b / x for b, x in zip(med["bounded"], med["fp32 head"])]
    same = sum(a == b for a, b in zip(toks["bounded"], toks["fp32 head"]))
    trace = trace_bounded_head(art, [p[0].tolist() for p in prompts], args.tokens)
    cands = [r["candidates"] for r in trace]
    worst, differ = max(r["ratio"] for r in trace), sum(not r["agrees"] for r in trace)
    q = np.quantile(cands, [0.5, 0.9, 1.0])
    lines = [
        "| choice | median TPOT ms (over prompts) | TPOT / fp32 head (median of per-prompt ratios) |",
        "|---|---:|---:|",
        f"| fp32 head | {statistics.median(med['fp32 head']):.2f} | 1.00 |",
        f"| bounded | {statistics.median(med['bounded']):.2f} | {statistics.median(ratios):.2f} |",
        "",
        f"- same tokens, bounded vs fp32 head: {same} of {len(prompts)} prompts",
        f"- candidates per step ({len(cands)} steps, vocabulary {models['bounded'].meta['vocab_size']}): "
        f"median {q[0]:.0f}, 90th percentile {q[1]:.0f}, largest {q[2]:.0f}",
        f"- largest |approx - fp32 logit| / bound: {worst:.3f} (must be <= 1)",
        f"- steps where the head's choice differs from the masked fp32 argmax: {differ} of {len(cands)}",
    ]
    write_result(Path(args.out), f"The bounded greedy head vs the fp32 head: `{args.model}` int4-lossless",
                 "python bench/bounded_head.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
                 "See the script's docstring.  TPOT: first token to last over the steps between, per prompt the "
                 "median over the rounds; the two choices interleaved prompt by prompt.", "\n".join(lines),
                 rounds=args.rounds, prompts=len(prompts), tokens=args.tokens, threads=1, batch=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
