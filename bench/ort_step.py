"""The ONNX Runtime decoding step before and after the greedy head, side by side (issue 12, item 2).

Variants of the ``onnxruntime`` engine on the same artefact (same weights), batch 1, 1 thread:

* ``before``: the engine's CPU default, the decoder graph with the head stripped from the session
  (:func:`testbed.engines.onnxruntime.runner.strip_greedy_head`): the step returns the (1, V) logits, numpy
  masks the banned ids and takes the argmax (the graph and choice of the code before the head);
* ``head``: the step returns ``next_ids`` from the graph; the logits are never copied out;
* ``head+iobinding``: the same through an IO binding (cache tensors stay OrtValues between steps).

Part 1 (timing): every test sentence through every variant in turn (the starting variant rotates),
``--rounds`` passes; median TPOT / E2E per variant and the median over sentences of each
variant's TPOT ratio to ``before`` on the same sentence; outputs compared with ``before``.
Part 2 (profile): ``--profile-n`` sentences per variant with ONNX Runtime's profiler on and the
decoder's ``run()`` timed from Python (wall and thread CPU time): medians per decoder step of the
kernel time (the nodes' ``*_kernel_time`` summed), ORT's executor overhead (``model_run`` minus
kernels), the Python binding's overhead (the ``run()`` call minus ``model_run``), and the time
between two decoder calls of one sentence (engine loop, streaming, detokenisation).

    python bench/ort_step.py                     # marian-en-de fp32 + int8, 100 sentences, 2 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from testbed.client.inproc import request_of, run_one  # noqa: E402
from testbed.clock import now_ns, thread_cpu_ns  # noqa: E402
from testbed.config import EngineConfig  # noqa: E402
from testbed.datasets import load_dataset  # noqa: E402
from testbed.engines.onnxruntime.engine import OnnxRuntimeEngine  # noqa: E402
from testbed.engines.onnxruntime.runner import OrtModel  # noqa: E402
from testbed.io import write_text_atomic  # noqa: E402
from testbed.metrics.formulas import e2e_ms, tpot_ms  # noqa: E402
from testbed.signature import git_sha, result_header  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("before", "head", "head+iobinding")


@dataclass
class Variant:
    label: str
    precision: str
    engine: OnnxRuntimeEngine
    art: Path
    tpot: list[float | None] = field(default_factory=list)
    e2e: list[float | None] = field(default_factory=list)
    cpu: list[float | None] = field(default_factory=list)  # thread CPU ms per sentence
    ids: list[list[int] | None] = field(default_factory=list)


def make(label: str, precision: str, model: str, profile: str = "") -> Variant:
    cfg = EngineConfig(engine="onnxruntime", model=model, precision=precision, threads=1)
    eng = OnnxRuntimeEngine(cfg, io_binding=label == "head+iobinding", greedy_in_graph=label != "before")
    eng.load()
    if profile:
        eng.ort = OrtModel(eng.artifact, replace(eng.ort.settings, profile_prefix=profile))
    assert eng.ort.head == (label != "before")
    return Variant(label, precision, eng, eng.artifact)


def timing(variants: list[Variant], examples: list[Any], rounds: int, warmup: int) -> None:
    for v in variants:
        for ex in examples[:warmup]:
            run_one(v.engine, request_of(ex), warmup=True)
        v.tpot, v.e2e, v.ids, v.cpu = ([None] * len(examples) for _ in range(4))
    for r in range(rounds):
        for i in range(r, len(examples), rounds):
            k = i % len(variants)
            for v in variants[k:] + variants[:k]:
                c0 = thread_cpu_ns()
                rec = run_one(v.engine, request_of(examples[i]), keep_token_ids=True)
                v.cpu[i] = (thread_cpu_ns() - c0) / 1e6
                v.tpot[i], v.e2e[i], v.ids[i] = tpot_ms(rec), e2e_ms(rec), rec.extra.pop("token_ids", None)


class TimedRun:
    """Wraps a session's ``run`` / ``run_with_iobinding``: each call's (start, end) wall and thread CPU times."""

    def __init__(self, sess: Any) -> None:
        self.sess = sess
        self.calls: list[tuple[int, int, int, int]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.sess, name)
        return self.wrap(attr) if name in ("run", "run_with_iobinding") else attr

    def wrap(self, fn: Any) -> Any:
        """``fn`` (a run of this session), each call timed."""

        def timed(*a: Any, **kw: Any) -> Any:
            t0, c0 = now_ns(), thread_cpu_ns()
            try:
                return fn(*a, **kw)
            finally:
                self.calls.append((t0, now_ns(), c0, thread_cpu_ns()))

        return timed


def profile(precision: str, label: str, model: str, examples: list[Any], tmp: Path) -> dict[str, Any]:
    """Per decoder step (medians over the steps of ``examples``): kernel time, ORT's executor overhead,
    the Python binding's overhead, and the Python between two steps of one sentence; wall and CPU."""
    v = make(label, precision, model, profile=str(tmp / f"prof-{precision}-{label.replace('+', '_')}"))
    for ex in examples[:3]:
        run_one(v.engine, request_of(ex), warmup=True)
    timed = TimedRun(v.engine.ort.decoder)
    v.engine.ort.decoder = timed
    # the CPU path calls the session's run() through a reference taken at load (OrtModel._decoder_run)
    v.engine.ort._decoder_run = timed.wrap(v.engine.ort._decoder_run)
    first = []  # index of each sentence's first call
    for ex in examples:
        first.append(len(timed.calls))
        run_one(v.engine, request_of(ex))
    path = timed.sess.end_profiling()
    v.engine.close()
    events = json.loads(Path(path).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    runs = runs[len(runs) - len(timed.calls):]  # the warm-up requests' runs come first
    nodes = sorted((e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")),
                   key=lambda e: e["ts"])
    kernels = [0.0] * len(runs)
    per_op: dict[str, float] = {}
    j = 0
    for e in nodes:
        while j < len(runs) and e["ts"] > runs[j]["ts"] + runs[j]["dur"]:
            j += 1
        if j < len(runs) and e["ts"] >= runs[j]["ts"]:
            kernels[j] += e["dur"]
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"]
    c = timed.calls
    starts = set(first)
    gaps = [(c[k][0] - c[k - 1][1], c[k][2] - c[k - 1][3]) for k in range(1, len(c)) if k not in starts]
    total = sum(per_op.values()) or 1.0
    return {
        "precision": precision, "variant": label, "steps": len(runs),
        "kernel_us": statistics.median(kernels),
        "executor_us": statistics.median(r["dur"] - k for r, k in zip(runs, kernels)),
        "binding_us": statistics.median((t1 - t0) / 1e3 - r["dur"] for (t0, t1, _, _), r in zip(c, runs)),
        "call_us": statistics.median((t1 - t0) / 1e3 for t0, t1, _, _ in c),
        "call_cpu_us": statistics.median((c1 - c0) / 1e3 for _, _, c0, c1 in c),
        "gap_us": statistics.median(g[0] / 1e3 for g in gaps),
        "gap_cpu_us": statistics.median(g[1] / 1e3 for g in gaps),
        "top_ops": sorted(((op, 100 * us / total) for op, us in per_op.items()), key=lambda kv: -kv[1])[:6],
    }


def _med(xs: list[float | None]) -> float:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else float("nan")


def report(command: str, timings: dict[str, list[Variant]], profiles: list[dict[str, Any]], facts: dict[str, Any],
           sha: str) -> str:
    out = ["# ONNX Runtime decoding step: greedy head in the graph, before and after", "",
           result_header(command, **facts).replace(f"- git: {git_sha()}", f"- git: {sha}"), "",
           "`before`: the CPU default, the same artefact's decoder with the head stripped from the session's "
           "graph (logits copied out, numpy masks and takes the argmax: the graph and step of the code before "
           "the head; the per-step padding recount it also had is gone in every variant); "
           "`head`: `next_ids` from the graph (logits not fetched); `head+iobinding`: the same through an "
           "IO binding. Ratios are medians over sentences of TPOT(variant) / TPOT(before) on the same sentence; "
           "the CPU-time ratio is the same over the thread's CPU time for the whole sentence (ONNX Runtime "
           "runs its kernels on the calling thread at 1 thread), which time slices lost to other processes "
           "on a loaded machine do not inflate.", ""]
    out += ["## TPOT side by side (batch 1, 1 thread, interleaved sentence by sentence)", "",
            "| precision | variant | median TPOT ms | median E2E ms | median per-sentence TPOT ratio to before "
            "| median per-sentence CPU-time ratio to before | outputs identical to before |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for prec, vs in timings.items():
        base = vs[0]
        for v in vs:
            ratios = [a / b for a, b in zip(v.tpot, base.tpot) if a is not None and b]
            cpu = [a / b for a, b in zip(v.cpu, base.cpu) if a is not None and b]
            same = sum(a == b for a, b in zip(v.ids, base.ids))
            out.append(f"| {prec} | {v.label} | {_med(v.tpot):.3f} | {_med(v.e2e):.2f} | "
                       f"{statistics.median(ratios) if ratios else float('nan'):.3f} | "
                       f"{statistics.median(cpu) if cpu else float('nan'):.3f} | {same}/{len(v.ids)} |")
    out += ["", "## Where one decoder step's time goes (ONNX Runtime profiler on; medians over the steps)", "",
            "kernels: the nodes' kernel times summed per run; executor: ORT's `model_run` minus the kernels; binding: "
            "the `run()` call as Python sees it minus `model_run` (feeds/fetches conversion); between steps: from one "
            "decoder call's end to the next call's start in the same sentence (the engine's loop, streaming, "
            "detokenisation). CPU: the calling thread's CPU time (ORT runs its kernels on it at 1 thread).", "",
            "| precision | variant | steps | kernels us | executor us | binding us | run() call us (CPU) "
            "| between steps us (CPU) | ops, share of kernel time |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for p in profiles:
        ops = ", ".join(f"{op} {pct:.0f}%" for op, pct in p["top_ops"])
        out.append(f"| {p['precision']} | {p['variant']} | {p['steps']} | {p['kernel_us']:.0f} "
                   f"| {p['executor_us']:.0f} "
                   f"| {p['binding_us']:.0f} | {p['call_us']:.0f} ({p['call_cpu_us']:.0f}) "
                   f"| {p['gap_us']:.0f} ({p['gap_cpu_us']:.0f}) | {ops} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="marian-en-de")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("-n", type=int, default=100, help="test sentences for the timing part")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--profile-n", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS / "ort_step_profile.md")
    args = ap.parse_args(argv)
    sha = git_sha()
    command = "python bench/ort_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    examples = list(load_dataset("test", limit=args.n))
    precs = [p for p in args.precisions.split(",") if p]
    timings: dict[str, list[Variant]] = {}
    profiles: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for prec in precs:
            vs = [make(label, prec, args.model) for label in VARIANTS]
            timing(vs, examples, args.rounds, args.warmup)
            timings[prec] = vs
            for v in vs:
                v.engine.close()
            print(f"{prec}: " + ", ".join(f"{v.label} TPOT {_med(v.tpot):.3f} ms" for v in vs), file=sys.stderr)
        for prec in precs:
            for label in VARIANTS:
                profiles.append(profile(prec, label, args.model, examples[: args.profile_n], tmp))
    text = report(command, timings, profiles,
                  {"model": args.model, "sentences": args.n, "rounds": args.rounds, "warmup": args.warmup,
                   "profiled_sentences": args.profile_n, "threads": 1, "batch": 1}, sha)
    write_text_atomic(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
