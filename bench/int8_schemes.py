"""Which int8 scheme is faithful *and* fast, per part of the model: Marian and SmolLM2 on ONNX Runtime.

Two questions the int8-auto search (testbed.export.int8_auto) left open, measured side by side:

* **marian-en-de**: where does dynamic int8 lose its fidelity, and does a faster scheme keep it?
  Variants built from the fp32 graphs: ONNX Runtime dynamic int8 (per-tensor), 8-bit weight-only
  ``MatMulNBits`` (accuracy level 4) in blocks of 32 / 64 / 128, the two graphs split (dynamic
  encoder + weight-only decoder, and the reverse), and dynamic int8 with one kind of decoder group
  in weight-only instead.  Each decodes the whole dev set in batches of 32 in two batch
  compositions (as the search does) and is gated with the sweep's rule against the fp32 graphs;
  fidelity = BLEU against the fp32 graphs' outputs (the lower of the two compositions).  Then batch
  1, 1 thread, every variant and fp32 interleaved sentence by sentence on ``--timing`` dev
  sentences: median ms per sentence and the ratio to dynamic int8.
* **smollm2-135m-instruct**: can any int8 scheme pass the chat gate (agreement with the fp32
  replies)?  fp32, dynamic int8 and weight-only int8 (blocks of 32 / 64) on the first ``--chat-n``
  chat prompts, greedy, ``--chat-max-new`` tokens, one batch: BLEU / chrF / exact match against the
  fp32 replies; then batch 1, 1 thread, interleaved: median ms per generated token.

    python bench/int8_schemes.py --out bench/results/int8_schemes.md

Ratios measured on this CPU are not claims about another (the header names its ISA).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from testbed.datasets import load_dataset
from testbed.engines.onnxruntime.contract import DECODER, ENCODER, META
from testbed.export import int8_auto as ia
from testbed.export.onnx_export import ensure_onnx
from testbed.signature import git_sha, result_header

MARIAN, CHAT = "marian-en-de", "smollm2-135m-instruct"


def weight_only(src: Path, dst: Path, block: int, exclude: list[str] | None = None) -> None:
    """8-bit MatMulNBits of every constant-weight MatMul but ``exclude`` (blocks of ``block`` along K, level 4)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    cfg = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=False, accuracy_level=4, bits=8)
    q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=block, is_symmetric=False, accuracy_level=4,
                             nodes_to_exclude=list(exclude or []), algo_config=cfg)
    q.process()
    tmp = dst.with_suffix(".tmp")
    q.model.save_model_to_file(str(tmp), use_external_data_format=False)
    tmp.replace(dst)


def marian_variants(base: Path, work: Path) -> dict[str, Path]:
    groups = ia.matmul_groups(base, json.loads((base / META).read_text()))
    out: dict[str, Path] = {}

    def fresh(name: str, wo_groups: list[str] | None = None) -> Path:
        """Dynamic per-tensor int8 of every group but ``wo_groups`` (those stay fp32 for now)."""
        return ia.quantize_variant(base, work / name, groups, wo_groups or [], False, False, "dynamic")

    out["dynamic int8 (per-tensor)"] = fresh("dyn")
    for b in (32, 64, 128):
        d = work / f"w{b}"
        shutil.copytree(base, d)
        for g in (ENCODER, DECODER):
            weight_only(base / g, d / g, b)
        out[f"weight-only, block {b}"] = d
    for name, graph in (("encoder dynamic + decoder weight-only 32", DECODER),
                        ("encoder weight-only 32 + decoder dynamic", ENCODER)):
        d = fresh(f"split-{graph}")
        weight_only(base / graph, d / graph, 32)
        out[name] = d
    for kind in ("self_attn", "cross_attn", "ffn"):
        wo = [g for g in groups if g.startswith("dec") and g.endswith(kind)]
        d = fresh(f"mixed-{kind}", wo)  # those groups fp32 here, then weight-only below
        for graph in (ENCODER, DECODER):
            keep = [n for g, nodes in groups.items() if g not in wo for gr, n in nodes if gr == graph]
            weight_only(d / graph, d / graph, 32, keep)
        out[f"dynamic, decoder {kind} weight-only 32"] = d
    return out


def marian(args: argparse.Namespace, work: Path) -> list[str]:
    base = ensure_onnx(MARIAN, "fp32")
    variants = marian_variants(base, work)
    dev = load_dataset("dev")
    texts, refs = [e.text or "" for e in dev], [e.reference or "" for e in dev]
    s = ia.SearchSettings()

    def decode(art: Path, shift: int = 0) -> list[tuple[str, int]]:
        eng = ia._engine(art, MARIAN, "none", None, s.max_new_tokens)
        try:
            return ia.decode_dev(eng, texts, s.batch, shift)
        finally:
            eng.close()

    fp32 = decode(base)
    fp32_bleu = ia._bleu([t for t, _ in fp32], refs)
    gates: dict[str, list[dict[str, Any]]] = {}
    for name, art in variants.items():
        gates[name] = [ia._gate(decode(art, c * s.batch // 2), fp32, refs, s, fp32_bleu) for c in range(2)]
        print(name, [(g["fidelity"], g["dev_verdict"]) for g in gates[name]], file=sys.stderr, flush=True)
    med = ia.interleaved_medians(list(variants.values()) + [base],
                                 lambda a: ia._engine(a, MARIAN, "none", 1, s.max_new_tokens),
                                 [[t] for t in texts[: args.timing]])
    ref = med[0]
    lines = [f"## {MARIAN}: dev set ({len(texts)} sentences), fp32 graphs' BLEU {fp32_bleu:.2f}", "",
             "| variant | fidelity (min of 2 compositions) | verdicts (2 compositions) | dev BLEU % of fp32 | "
             "median ms / sentence (batch 1, 1 thread) | / dynamic int8 | / fp32 |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for (name, gs), m in zip(gates.items(), med):
        lines.append(f"| {name} | {min(g['fidelity'] for g in gs):.2f} | {', '.join(g['dev_verdict'] for g in gs)} | "
                     f"{gs[0]['pct_of_fp32']} | {m:.2f} | {m / ref:.2f} | {m / med[-1]:.2f} |")
    lines.append(f"| fp32 | 100 | - | 100 | {med[-1]:.2f} | {med[-1] / ref:.2f} | 1.00 |")
    return lines


def chat(args: argparse.Namespace, work: Path) -> list[str]:
    from sacrebleu.metrics import BLEU, CHRF

    from testbed.engines.types import GenerationRequest

    base, i8 = ensure_onnx(CHAT, "fp32"), ensure_onnx(CHAT, "int8")
    variants = {"fp32": base, "dynamic int8 (testbed's int8)": i8}
    for b in (32, 64):
        d = work / f"chat-w{b}"
        shutil.copytree(base, d)
        weight_only(base / DECODER, d / DECODER, b)
        variants[f"weight-only, block {b}"] = d
    reqs = [GenerationRequest(messages=tuple(e.messages or ())) for e in load_dataset("chat", limit=args.chat_n)]

    def engine(art: Path, threads: int | None) -> Any:
        return ia._engine(art, CHAT, "none", threads, args.chat_max_new)

    replies: dict[str, list[str]] = {}
    for name, art in variants.items():
        eng = engine(art, None)
        try:
            replies[name] = [g.text for g in eng.generate(reqs)]
        finally:
            eng.close()
    med = ia.interleaved_medians(list(variants.values()), lambda a: engine(a, 1),
                                 [[r] for r in reqs[: args.chat_timing]], per_token=True)
    ref = replies["fp32"]
    lines = [f"## {CHAT}: {len(reqs)} chat prompts, greedy, {args.chat_max_new} new tokens, one batch", "",
             "| variant | BLEU vs fp32 replies | chrF vs fp32 replies | exact match | "
             f"median ms / token (batch 1, 1 thread, {args.chat_timing} prompts) | / fp32 |",
             "|---|---:|---:|---:|---:|---:|"]
    for (name, out), m in zip(replies.items(), med):
        bleu, chrf = BLEU().corpus_score(out, [ref]).score, CHRF().corpus_score(out, [ref]).score
        lines.append(f"| {name} | {bleu:.2f} | {chrf:.2f}"
                     f" | {sum(a == b for a, b in zip(out, ref))}/{len(ref)} | {m:.2f} | {m / med[0]:.2f} |")
    return lines


def rounds_line(args: argparse.Namespace) -> str:
    return (f"1 interleaved round: {args.timing} Marian dev sentences and {args.chat_timing} chat prompts, each "
            "once per artefact; one warm-up call per artefact, excluded")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timing", type=int, default=80, help="Marian dev sentences timed at batch 1")
    ap.add_argument("--chat-n", type=int, default=24)
    ap.add_argument("--chat-timing", type=int, default=8)
    ap.add_argument("--chat-max-new", type=int, default=32)
    ap.add_argument("--skip", default="", help="comma-separated: marian, chat")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    git_sha()  # now, so that later edits cannot relabel the run
    skip = {s for s in args.skip.split(",") if s}
    work = Path(tempfile.mkdtemp(prefix="int8schemes-"))
    lines = ["# int8 schemes: fidelity and speed, per part of the model (ONNX Runtime, CPU)", ""]
    try:
        if "marian" not in skip:
            lines += marian(args, work) + [""]
        if "chat" not in skip:
            lines += chat(args, work) + [""]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines)
    if args.out:
        from testbed.io import write_text_atomic

        cmd = "python bench/int8_schemes.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_text_atomic(Path(args.out), result_header(cmd, threads="1 for timing, ORT default for decoding",
                                                          rounds=rounds_line(args))
                          + "\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
