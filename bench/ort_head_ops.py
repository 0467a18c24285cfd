"""The greedy choice alone: ONNX Runtime's head (testbed.export.greedy_head) vs copying the logits out and numpy.

On random logits of a model's vocabulary size, at 1 thread, thread CPU time per call (minimum and
p25 over ``--reps`` calls in ``--rounds`` interleaved rounds):

* ``logits out + numpy``: a graph that returns the logits (Identity), numpy masks the banned id and
  takes the argmax (the engine's CPU path);
* ``head``: the same graph with the greedy head, fetching ``next_ids`` only;
* ``head graph, logits fetched``: the head's nodes still run when only the logits are asked for
  (why the engine strips the head from the session's graph on the CPU);
* ``ArgMax alone`` (ORT) and ``numpy argmax alone``.

    python bench/ort_head_ops.py                  # V = 58101 (marian-en-de), batch 1 and 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from testbed.clock import thread_cpu_ns
from testbed.engines.onnxruntime.contract import LOGITS, NEXT_IDS, NO_EOS
from testbed.export.greedy_head import add_greedy_head
from testbed.io import write_text_atomic
from testbed.signature import git_sha, result_header

RESULTS = Path(__file__).resolve().parent / "results"


def _graph(vocab: int, argmax_only: bool = False) -> Any:
    from onnx import TensorProto, helper

    node = (helper.make_node("ArgMax", ["x"], [NEXT_IDS], axis=1, keepdims=0) if argmax_only
            else helper.make_node("Identity", ["x"], [LOGITS]))
    out = (helper.make_tensor_value_info(NEXT_IDS, TensorProto.INT64, ["batch"]) if argmax_only
           else helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", vocab]))
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", vocab])], [out])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _session(model: Any) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def measure(vocab: int, batch: int, reps: int, rounds: int) -> dict[str, list[int]]:
    banned = [vocab - 1]
    plain, head = _session(_graph(vocab)), _session(add_greedy_head(_graph(vocab), banned, [0], vocab))
    argmax = _session(_graph(vocab, argmax_only=True))
    x = np.random.default_rng(0).standard_normal((batch, vocab)).astype(np.float32)
    no_eos = np.zeros(batch, dtype=bool)

    def numpy_path() -> Any:
        logits = plain.run([LOGITS], {"x": x})[0]
        logits[:, banned] = -np.inf
        return logits.argmax(-1)

    calls = {
        "logits out + numpy": numpy_path,
        "head (next_ids)": lambda: head.run([NEXT_IDS], {"x": x, NO_EOS: no_eos}),
        "head graph, logits fetched": lambda: head.run([LOGITS], {"x": x, NO_EOS: no_eos}),
        "ArgMax alone (ORT)": lambda: argmax.run([NEXT_IDS], {"x": x}),
        "numpy argmax alone": lambda: x.argmax(-1),
    }
    assert np.array_equal(numpy_path(), head.run([NEXT_IDS], {"x": x, NO_EOS: no_eos})[0])
    times: dict[str, list[int]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, f in calls.items():
            for _ in range(reps):
                c0 = thread_cpu_ns()
                f()
                times[name].append(thread_cpu_ns() - c0)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=58101)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "ort_head_ops.md")
    args = ap.parse_args(argv)
    sha = git_sha()
    command = "python bench/ort_head_ops.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = ["| batch | call | min us | p25 us | p25 ratio to logits out + numpy |", "|---:|---|---:|---:|---:|"]
    for b in (int(v) for v in args.batches.split(",")):
        t = measure(args.vocab, b, args.reps, args.rounds)
        base = float(np.percentile(t["logits out + numpy"], 25))
        for name, v in t.items():
            p25 = float(np.percentile(v, 25))
            rows.append(f"| {b} | {name} | {min(v) / 1e3:.1f} | {p25 / 1e3:.1f} | {p25 / base:.2f} |")
    text = "\n".join([
        "# The greedy choice alone: ONNX Runtime's in-graph head vs logits out + numpy (CPU, 1 thread)", "",
        result_header(command, vocab=args.vocab, reps=args.reps, rounds=args.rounds, threads=1,
                      timer="thread CPU time per call").replace(f"- git: {git_sha()}", f"- git: {sha}"), "",
        *rows, ""])
    write_text_atomic(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
