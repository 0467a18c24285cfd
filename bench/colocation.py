"""Does a configuration run slower when other models share its process?  (Why bench/engines.py isolates.)

For each measured configuration, in a fresh process of its own, one request's TPOT (the same chat
prompt, ``--tokens`` new tokens, EOS ignored; non-streamed for CTranslate2 called directly:
``(t_full - t_first) / (N - 1)``, streamed through ``Engine.stream`` for testbed engines) in
three states, ``--reps`` requests each, alternating blocks so drift hits all alike:

* ``alone``: nothing else loaded in the process;
* ``others loaded``: the other configurations of ``--others`` loaded in the same process, idle;
* ``after another``: each request right after one request of another loaded configuration (what
  an interleaved benchmark in one process does).

Printed per configuration: median TPOT per state and its ratio to ``alone``; the table's ratio
between two configurations is what an in-process comparison would report instead of the isolated one.

    python bench/colocation.py                    # SmolLM2: ORT int4-lossless and fp32, CT2 int8 direct
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from testbed.client.inproc import run_one  # noqa: E402
from testbed.clock import now_ns  # noqa: E402
from testbed.config import EngineConfig  # noqa: E402
from testbed.engines.base import GenerationRequest  # noqa: E402
from testbed.engines.registry import create_engine  # noqa: E402
from testbed.metrics import summary as S  # noqa: E402
from testbed.metrics.steps import call_tpot_ms  # noqa: E402
from testbed.signature import git_sha, write_result  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "Tell me about the moon and the stars."
DIRECT = "ct2-direct"


def _engine(spec: str, model: str, tokens: int) -> Any:
    engine, precision = spec.split("/")
    name = "ctranslate2" if engine == DIRECT else engine
    return create_engine(EngineConfig(model=model, engine=name, precision=precision, threads=1,
                                      max_new_tokens=tokens)).load()


def _tpot(spec: str, e: Any, tokens: int) -> float:
    """One request's TPOT in ms (see the module docstring)."""
    req = GenerationRequest(text=PROMPT, max_new_tokens=tokens, ignore_eos=True)
    if spec.startswith(DIRECT):
        toks = e.tokenizer.convert_ids_to_tokens(e.encode_input(req))

        def call(n: int) -> int:
            t0 = now_ns()
            e.model.generate_batch([toks], beam_size=1, max_length=n, min_length=n, include_prompt_in_result=False)
            return now_ns() - t0

        t = call_tpot_ms(call(tokens), call(1), tokens)
        assert t is not None
        return t
    t = S.tpot_ms(run_one(e, req))
    assert t is not None
    return t


def child(spec: str, others: list[str], model: str, tokens: int, reps: int) -> None:
    """Measure ``spec`` in this (fresh) process; print one line: alone, others loaded, after another (ms)."""
    e = _engine(spec, model, tokens)
    for _ in range(2):
        _tpot(spec, e, tokens)
    alone = [_tpot(spec, e, tokens) for _ in range(reps)]
    loaded = [_engine(o, model, 4) for o in others if o != spec]
    for o in loaded:
        o.generate([PROMPT])
    idle, after = [], []
    for k in range(reps):  # alternating: idle neighbours, then right after a neighbour's request
        idle.append(_tpot(spec, e, tokens))
        loaded[k % len(loaded)].generate([PROMPT])
        after.append(_tpot(spec, e, tokens))
    print("RESULT", statistics.median(alone), statistics.median(idle), statistics.median(after), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--configs", default=f"onnxruntime/int4-lossless,onnxruntime/fp32,{DIRECT}/int8",
                    help="comma-separated engine/precision to measure (ct2-direct: CTranslate2 called directly)")
    ap.add_argument("--others", default=f"onnxruntime/int4-lossless,onnxruntime/fp32,onnxruntime/int8,torch/fp32,"
                    f"ctranslate2/fp32,{DIRECT}/int8", help="the configurations loaded beside it")
    ap.add_argument("--tokens", type=int, default=33)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS / "colocation.md"))
    args = ap.parse_args(argv)
    others = [o for o in args.others.split(",") if o]
    if args.child:
        child(args.child, others, args.model, args.tokens, args.reps)
        return 0
    git_sha()
    rows = []
    for spec in [c for c in args.configs.split(",") if c]:
        cmd = [sys.executable, __file__, "--child", spec, "--model", args.model, "--others", args.others,
               "--tokens", str(args.tokens), "--reps", str(args.reps)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        a, b, c = (float(x) for x in next(ln for ln in out.splitlines() if ln.startswith("RESULT")).split()[1:])
        rows.append((spec, a, b, c))
        print(spec, a, b, c, file=sys.stderr)
    lines = ["| configuration | alone TPOT ms | others loaded | ratio | after another's request | ratio |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {s} | {a:.2f} | {b:.2f} | {b / a:.2f} | {c:.2f} | {c / a:.2f} |" for s, a, b, c in rows]
    ref = next((r for r in rows if r[0].startswith(DIRECT)), None)
    if ref is not None:
        lines += ["", "| configuration | TPOT / CT2 int8 direct, each alone "
                  "| in one process, after another's request |", "|---|---:|---:|"]
        lines += [f"| {s} | {a / ref[1]:.2f} | {c / ref[3]:.2f} |" for s, a, _, c in rows if s != ref[0]]
    write_result(Path(args.out), f"Other models in the same process: `{args.model}`",
                 "python bench/colocation.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
                 "One request's TPOT (1 thread, EOS ignored) per state, each configuration measured in a fresh "
                 "process of its own; see the script's docstring.", "\n".join(lines),
                 rounds=1, reps=args.reps, tokens=args.tokens, others=args.others)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
