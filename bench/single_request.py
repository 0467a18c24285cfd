"""One seq2seq request on ONNX Runtime's CPU path: ``OrtModel.decode_one`` vs the batch, non-streamed and streamed.

One engine, one artefact, the same sessions; each request two ways, interleaved sentence by sentence
(order alternating), batch 1, 1 thread, wall time around the call (tokenizer to text):

* ``decode_one``: what the engine runs for one request (``OrtModel.decode_one``: the encoder, then the
  steps with one feed dictionary kept across them);
* ``batch path``: the same request through the batch (``OrtBatch``: admission, the prefill step,
  the steps with their padding count, eviction), what the engine runs for two or more requests.

Two comparisons: ``generate([request])`` (as ``bench/engines.py`` times its non-streamed column), and a
stream of the request consumed to its end (``Engine.stream(request).run()``: a timestamp and the text
piece per token, as the SingleStream scenario, the demo and ``bench/engines.py``'s streamed columns take
them; its TPOT as METRICS.md defines it).  Printed: per comparison, the median per-sentence latency (and
TPOT) both ways, the median of the per-sentence ratios, the time outside ONNX Runtime's ``run()`` calls per
sentence (tokenizer, Python, bookkeeping), and whether every sentence got the same tokens both ways (it
must: the same runs on the same feeds).

    python bench/single_request.py                   # 400 test sentences, 3 rounds, int8
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

from testbed.config import EngineConfig
from testbed.datasets import load_dataset
from testbed.engines.base import Engine, GenerationRequest
from testbed.engines.registry import create_engine
from testbed.metrics.formulas import tpot_ms
from testbed.signature import git_sha, write_result

RESULTS = Path(__file__).resolve().parent / "results"
WAYS = ("decode_one", "batch path")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default="marian-en-de")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("-n", type=int, default=400, help="test sentences (default 400)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", default=str(RESULTS / "single_request.md"))
    args = ap.parse_args(argv)
    git_sha()  # the tree at the start
    eng: Any = create_engine(EngineConfig(model=args.model, engine="onnxruntime", precision=args.precision,
                                          threads=1)).load()
    if not eng.ort.lean_fits():
        raise SystemExit(f"{args.model} {args.precision}: decode_one does not apply (not a seq2seq artefact on the "
                         "plain CPU path)")
    texts = [ex.text or "" for ex in load_dataset("test", limit=args.n)]
    ort_ns = [0]

    def timed(fn: Any) -> Any:
        def run(*a: Any) -> Any:
            t0 = time.perf_counter_ns()
            out = fn(*a)
            ort_ns[0] += time.perf_counter_ns() - t0
            return out
        return run

    m = eng.ort
    m._decoder_run, m._encoder_run = timed(m._decoder_run), timed(m._encoder_run)  # both paths call these

    def batch_path(text: str) -> list[int]:
        p = eng.prepare(GenerationRequest(text=text))
        ids = Engine._generate_batch(eng, [p])[0]
        eng.decode(ids)
        return ids

    def stream(batch: bool) -> Any:
        def run(text: str) -> Any:
            if batch:  # the engine's own one-row batch (Engine._decode) for this stream
                eng._decode = types.MethodType(Engine._decode, eng)
            try:
                return eng.stream(text).run()
            finally:
                eng.__dict__.pop("_decode", None)
        return run

    comparisons = {
        "generate()": {"decode_one": lambda text: eng.generate([text])[0].token_ids, "batch path": batch_path},
        "stream": {"decode_one": stream(False), "batch path": stream(True)},
    }
    rows = ["| call | way | latency p50 ms | TPOT p50 ms | outside ONNX Runtime's run() per sentence, us "
            "| decode_one / batch path (median per sentence) | same tokens |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, ways in comparisons.items():
        for t in texts[: args.warmup]:  # warm-up (excluded)
            for f in ways.values():
                f(t)
        lat = {k: np.zeros((args.rounds, len(texts))) for k in WAYS}
        tpot = {k: np.full((args.rounds, len(texts)), np.nan) for k in WAYS}
        outside = dict.fromkeys(WAYS, 0)
        same = 0
        for r in range(args.rounds):
            for i, t in enumerate(texts):
                got = {}
                for k in (WAYS if (r + i) % 2 == 0 else WAYS[::-1]):
                    ort_ns[0] = 0
                    t0 = time.perf_counter_ns()
                    out = ways[k](t)
                    lat[k][r, i] = time.perf_counter_ns() - t0
                    outside[k] += int(lat[k][r, i]) - ort_ns[0]
                    if isinstance(out, list):
                        got[k] = out
                    else:
                        got[k] = out.token_ids
                        tp = tpot_ms(out.record())
                        tpot[k][r, i] = np.nan if tp is None else tp
                same += got["decode_one"] == got["batch path"]
        med = {k: np.median(v, axis=0) for k, v in lat.items()}  # per sentence, over rounds
        calls = args.rounds * len(texts)
        ratio = float(np.median(med["decode_one"] / med["batch path"]))
        for k in WAYS:
            tp = f"{np.nanmedian(tpot[k]):.3f}" if not np.isnan(tpot[k]).all() else "n/a"
            rows.append(f"| {name} | {k} | {np.median(med[k]) / 1e6:.3f} | {tp} | {outside[k] / calls / 1e3:.1f} | "
                        + (f"**{ratio:.3f}** | {same} of {calls} |" if k == WAYS[0] else " | |"))
    write_result(Path(args.out), f"One request, generate() and stream: decode_one vs the batch path (`{args.model}` "
                 f"{args.precision})", shlex.join(["python", "bench/single_request.py", *sys.argv[1:]]),
                 " ".join(p.replace("\n", " ") for p in (__doc__ or "").split("\n\n")[1:4]), "\n".join(rows),
                 model=args.model, precision=args.precision, sentences=len(texts), rounds=args.rounds, threads=1,
                 warmup=f"{args.warmup} sentences each way (excluded)")
    eng.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
