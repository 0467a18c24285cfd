"""Where ONNX Runtime's CPU decoding spends its time: the measurements behind the engine's CPU defaults.

On the embedded translation model's ONNX artefact (``--precision``, default int8), 1 thread, wall
time, each comparison interleaved (the alternatives take turns on the same inputs):

1. **SkipLayerNormFusion** (ONNX Runtime's Add + LayerNormalization -> SkipLayerNormalization): the
   encoder per sentence at batch 1, and one padded batch of 32, with the fusion on and off; then
   ``Engine.generate`` per sentence (batch 1) with the decoder step fused and not, the encoder
   unfused in both (the engine's CPU default is off in every graph:
   ``SessionSettings.fuse_skip_layernorm``);
2. **the encoder over length groups**: chunks of 32 test sentences encoded as one batch padded to the
   longest vs in :func:`testbed.engines.step.length_groups` (what the seq2seq batches do);
3. **the greedy choice**: ONNX Runtime's ``ArgMax`` over (B, V) logits vs numpy's ``argmax`` (what the
   in-graph greedy head and the greedy loop use vs the engine's CPU path);
4. **the greedy loop vs one run() per step**: per generated token, the ONNX ``Loop``'s time
   (``greedy_loop=True``) vs the step graph's ``run()``, and the Python between two ``run()`` calls of
   the step path (``Engine.generate`` minus the encoder and decoder runs, per step).

    python bench/ort_cpu_paths.py                     # -> bench/results/ort_cpu_paths.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from testbed.io import write_text_atomic
from testbed.signature import git_sha, result_header

RESULTS = Path(__file__).resolve().parent / "results"


def _session(path: str | bytes, fuse: bool) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=[] if fuse else ["SkipLayerNormFusion"])


def _wall(fn: Any, *args: Any) -> int:
    t0 = time.perf_counter_ns()
    fn(*args)
    return time.perf_counter_ns() - t0


def skip_layernorm(art: Path, seqs: list[list[int]], pad: int, rounds: int) -> list[str]:
    from testbed.engines.onnxruntime.runner import pad_batch

    sess = {"fused": _session(str(art / "encoder.onnx"), True), "unfused": _session(str(art / "encoder.onnx"), False)}
    singles = [pad_batch([s], pad, left=False) for s in seqs]
    batch = pad_batch(seqs[:32], pad, left=False)
    t: dict[tuple[str, str], list[int]] = {(k, w): [] for k in sess for w in ("batch 1", "batch 32 padded")}
    for _ in range(rounds):
        for ids, mask in singles:
            for k, s in sess.items():
                t[(k, "batch 1")].append(_wall(s.run, None, {"input_ids": ids, "attention_mask": mask}))
        for k, s in sess.items():
            feed = {"input_ids": batch[0], "attention_mask": batch[1]}
            t[(k, "batch 32 padded")].append(_wall(s.run, None, feed))
    rows = ["| call | fused us (median) | unfused us (median) | unfused / fused (median per call) |",
            "|---|---:|---:|---:|"]
    for w in ("batch 1", "batch 32 padded"):
        f, u = np.median(t[("fused", w)]) / 1e3, np.median(t[("unfused", w)]) / 1e3
        rows.append(f"| encoder, {w} | {f:.1f} | {u:.1f} | "
                    f"{np.median(np.array(t[('unfused', w)]) / np.array(t[('fused', w)])):.3f} |")
    return rows


def skip_layernorm_decoder(model: str, precision: str, texts: list[str], rounds: int) -> list[str]:
    """``Engine.generate`` per sentence with the decoder step's graph fused ("decoder") and not ("none")."""
    from testbed.config import EngineConfig
    from testbed.engines.onnxruntime.engine import OnnxRuntimeEngine
    from testbed.engines.types import GenerationRequest

    cfg = EngineConfig(model=model, engine="onnxruntime", precision=precision, threads=1)
    engines = {k: OnnxRuntimeEngine(cfg, fuse_skip_layernorm=k).load() for k in ("decoder", "none")}
    reqs = [GenerationRequest(text=t) for t in texts]
    t: dict[str, list[int]] = {k: [] for k in engines}
    for r in range(rounds):
        for i, req in enumerate(reqs):
            order = list(engines) if (i + r) % 2 == 0 else list(engines)[::-1]
            for k in order:
                t[k].append(_wall(engines[k].generate, [req]))
    f, u = np.median(t["decoder"]) / 1e3, np.median(t["none"]) / 1e3
    ratio = np.median(np.array(t["none"]) / np.array(t["decoder"]))
    return [f"| generate, batch 1 (decoder step fused or not) | {f:.1f} | {u:.1f} | {ratio:.3f} |"]


def length_groups_encoder(art: Path, seqs: list[list[int]], pad: int, rounds: int) -> list[str]:
    from testbed.engines.onnxruntime.runner import pad_batch
    from testbed.engines.step import length_groups

    s = _session(str(art / "encoder.onnx"), False)
    chunks = [seqs[k : k + 32] for k in range(0, len(seqs) - 31, 32)]
    t: dict[str, list[int]] = {"one padded pass": [], "length groups": []}
    padding: dict[str, list[float]] = {"one padded pass": [], "length groups": []}

    def run(groups: list[list[list[int]]]) -> None:
        for g in groups:
            ids, mask = pad_batch(g, pad, left=False)
            s.run(None, {"input_ids": ids, "attention_mask": mask})

    for _ in range(rounds):
        for c in chunks:
            grouped = [[c[i] for i in g] for g in length_groups([len(x) for x in c])]
            for name, groups in (("one padded pass", [c]), ("length groups", grouped)):
                t[name].append(_wall(run, groups))
                total = sum(max(len(x) for x in g) * len(g) for g in groups)
                padding[name].append(1 - sum(len(x) for x in c) / total)
    base = float(np.median(t["one padded pass"]))
    rows = ["| chunk of 32 encoded as | ms per chunk (median) | ratio | padding share (mean) |", "|---|---:|---:|---:|"]
    for name, v in t.items():
        rows.append(f"| {name} | {np.median(v) / 1e6:.2f} | {np.median(v) / base:.3f} | {np.mean(padding[name]):.0%} |")
    return rows


def greedy_choice(vocab: int, rounds: int) -> list[str]:
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("ArgMax", ["x"], ["i"], axis=1, keepdims=0)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", vocab])],
                          [helper.make_tensor_value_info("i", TensorProto.INT64, ["b"])])
    s = _session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), False)
    rows = ["| batch x vocab | ORT ArgMax us | numpy argmax us | ORT ns per logit | numpy ns per logit |",
            "|---|---:|---:|---:|---:|"]
    for b in (1, 32):
        x = np.random.default_rng(0).standard_normal((b, vocab)).astype(np.float32)
        ort_t, np_t = [], []
        for _ in range(rounds * 200):
            ort_t.append(_wall(s.run, ["i"], {"x": x}))
            np_t.append(_wall(x.argmax, -1))
        o, n = np.median(ort_t) / 1e3, np.median(np_t) / 1e3
        rows.append(f"| {b} x {vocab} | {o:.1f} | {n:.1f} | {o * 1e3 / x.size:.2f} | {n * 1e3 / x.size:.3f} |")
    return rows


def loop_vs_steps(model: str, precision: str, texts: list[str], rounds: int) -> list[str]:
    from testbed.config import EngineConfig
    from testbed.engines.onnxruntime.engine import OnnxRuntimeEngine
    from testbed.engines.types import GenerationRequest

    cfg = EngineConfig(model=model, engine="onnxruntime", precision=precision, threads=1, max_new_tokens=128)
    steps: Any = OnnxRuntimeEngine(cfg).load()
    loop: Any = OnnxRuntimeEngine(cfg, greedy_loop=True).load()
    reqs = [GenerationRequest(text=t) for t in texts]
    for r in reqs[:5]:
        steps.generate([r])
        loop.generate([r])
    acc = dict.fromkeys(("decoder", "decoder calls", "encoder", "loop", "steps total", "loop total", "loop tokens"), 0)

    def timed(fn: Any, key: str, calls: str | None = None) -> Any:
        def run(*a: Any) -> Any:
            t0 = time.perf_counter_ns()
            out = fn(*a)
            acc[key] += time.perf_counter_ns() - t0
            if calls:
                acc[calls] += 1
            return out
        return run

    steps.ort._decoder_run = timed(steps.ort._decoder_run, "decoder", "decoder calls")
    steps.ort._encoder_run = timed(steps.ort._encoder_run, "encoder")  # every encoder call goes through it
    assert loop.ort.loop is not None
    loop.ort.loop.run = timed(loop.ort.loop.run, "loop")
    lat: dict[str, list[int]] = {"steps": [], "loop": []}
    for _ in range(rounds):
        for r in reqs:
            t0 = time.perf_counter_ns()
            steps.generate([r])
            lat["steps"].append(time.perf_counter_ns() - t0)
            acc["steps total"] += lat["steps"][-1]
            t0 = time.perf_counter_ns()
            out = loop.generate([r])
            lat["loop"].append(time.perf_counter_ns() - t0)
            acc["loop total"] += lat["loop"][-1]
            acc["loop tokens"] += len(out[0].token_ids) - 1  # the first token comes from the prefill step
    per_step = acc["decoder"] / acc["decoder calls"] / 1e3
    per_iter = acc["loop"] / acc["loop tokens"] / 1e3
    python = (acc["steps total"] - acc["decoder"] - acc["encoder"]) / acc["decoder calls"] / 1e3
    ratio = float(np.median(np.array(lat["loop"]) / np.array(lat["steps"])))
    return ["| measure | value |", "|---|---:|",
            f"| step graph's run() per step, us | {per_step:.1f} |",
            f"| greedy loop per iteration (a token after the first), us | {per_iter:.1f} |",
            "| Python and bookkeeping per step of the step path (generate minus encoder and decoder runs), us | "
            f"{python:.1f} |",
            f"| per-sentence latency, loop / steps (median of per-sentence ratios) | {ratio:.3f} |",
            f"| sentences x rounds | {len(reqs)} x {rounds} |"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="marian-en-de")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("-n", type=int, default=320, help="test sentences (chunks of 32 for the encoder groups)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "ort_cpu_paths.md")
    args = ap.parse_args(argv)
    sha = git_sha()
    from testbed.config import EngineConfig
    from testbed.datasets import load_dataset
    from testbed.engines.onnxruntime.engine import OnnxRuntimeEngine
    from testbed.engines.types import GenerationRequest

    e: Any = OnnxRuntimeEngine(EngineConfig(model=args.model, engine="onnxruntime", precision=args.precision,
                                       threads=1)).load()
    texts = [x.text or "" for x in load_dataset("test", limit=args.n)]
    seqs = [list(e.prepare(GenerationRequest(text=t)).input_ids) for t in texts]
    art, pad, vocab = e.ort.dir, e.pad_id, int(e.ort.meta["vocab_size"])
    parts = [
        ("1. ONNX Runtime's SkipLayerNormFusion: the encoder (first 64 sentences one by one; the first 32 as "
         "one batch), then the decoder step (Engine.generate, first 100 sentences, the encoder unfused)",
         skip_layernorm(art, seqs[:64], pad, args.rounds * 3)
         + skip_layernorm_decoder(args.model, args.precision, texts[:100], args.rounds * 2)),
        ("2. The encoder at batch 32: one pass padded to the longest vs length_groups (at most 10% padding a group)",
         length_groups_encoder(art, seqs, pad, args.rounds)),
        ("3. The greedy choice over the vocabulary", greedy_choice(vocab, args.rounds)),
        ("4. The greedy loop in one ONNX Runtime call vs one run() per step (Engine.generate, batch 1)",
         loop_vs_steps(args.model, args.precision, texts[:100], args.rounds)),
    ]
    command = "python bench/ort_cpu_paths.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([f"# ONNX Runtime's CPU paths: `{args.model}` {args.precision}", "",
                      result_header(command, model=args.model, precision=args.precision, sentences=args.n,
                                    rounds=args.rounds, threads=1, timer="wall time (perf_counter_ns)")
                      .replace(f"- git: {git_sha()}", f"- git: {sha}"), ""]
                     + [line for title, rows in parts for line in (f"## {title}", "", *rows, "")])
    write_text_atomic(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
