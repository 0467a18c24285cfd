"""What the CTranslate2 engine's streaming adapter costs, next to CTranslate2 called directly.

Same converted model, same sentences, ``--threads`` (default 1), greedy; the variants run
interleaved sentence by sentence (the starting one rotating), each timed from the request text
to the output (tokenizer included):

* ``direct``: the tokenizer, one ``translate_batch`` / ``generate_batch`` call (the engine's
  options: end tokens, ``<pad>`` suppressed, ``return_end_token``), the decoded text (the reference);
* ``direct + callback``: the same call with a no-op per-step ``callback`` (synchronous): what
  asking CTranslate2 for per-step results costs;
* ``direct + async stream``: ``asynchronous=True``, the callback puts each step on a queue that
  this thread reads (:func:`testbed.engines.ctranslate2.engine.stream_steps`): adds the hand-off
  from CTranslate2's thread to the caller's, per token;
* ``engine _decode``: the engine's streaming generator (prepare + ``_decode``, token ids only);
* ``engine stream, no detok``: ``Engine.stream`` with the incremental detokenizer's text left out;
* ``engine stream``: ``Engine.stream`` as served (``Stream``: token times, incremental text);
* ``engine generate``: ``Engine.generate([request])``, the non-streamed path.

Reported per variant: the median over sentences of its time / ``direct``'s, p50 ms, and the extra
time per output token (the median over sentences of ``(t - t_direct) / N``).

    python bench/ct2_overhead.py -n 100 --precision int8
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from testbed.client.inproc import request_of, run_one  # noqa: E402
from testbed.clock import now_ns  # noqa: E402
from testbed.config import EngineConfig  # noqa: E402
from testbed.datasets import load_dataset  # noqa: E402
from testbed.engines.ctranslate2.engine import stream_steps  # noqa: E402
from testbed.engines.detok import Detokenizer  # noqa: E402
from testbed.engines.registry import create_engine  # noqa: E402
from testbed.io import write_text_atomic  # noqa: E402
from testbed.signature import git_sha, result_header  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def variants(eng: Any) -> dict[str, Callable[[Any], Any]]:
    tok = eng.tokenizer
    process = eng.model.translate_batch if eng.seq2seq else eng.model.generate_batch

    def call(req: Any, **kw: Any) -> str:
        tokens = tok.convert_ids_to_tokens(eng.encode_input(req))
        opts = eng._options(eng.config.max_new_tokens)
        if eng.target_prefix:
            opts["target_prefix"] = [eng.target_prefix]
        if kw.pop("stream", False):
            ids = [int(s.token_id) for s in stream_steps(process, [tokens], **opts)]
        else:
            r = process([tokens], beam_size=1, return_end_token=True, **opts, **kw)[0]
            ids = tok.convert_tokens_to_ids(r.hypotheses[0]) if eng.seq2seq else r.sequences_ids[0]
        return str(eng.decode(ids))

    def decode_only(req: Any) -> list[Any]:
        return list(eng._decode(eng.prepare(req)))

    def no_detok(req: Any) -> Any:
        s = eng.stream(req)
        s._detok.add = lambda tid: ""  # token times and ids as served, no incremental text
        return s.run()

    return {
        "direct": call,
        "direct + callback": lambda req: call(req, callback=lambda step: False),
        "direct + async stream": lambda req: call(req, stream=True),
        "engine _decode": decode_only,
        "engine stream, no detok": no_detok,
        "engine stream": lambda req: run_one(eng, req),
        "engine generate": lambda req: eng.generate([req]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default="marian-en-de")
    ap.add_argument("--dataset", default="test")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-n", "--num", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", default=str(RESULTS / "ct2_overhead.md"))
    args = ap.parse_args(argv)
    git_sha()
    eng: Any = create_engine(EngineConfig(model=args.model, engine="ctranslate2", precision=args.precision,
                                          threads=args.threads, max_new_tokens=args.max_new_tokens))
    examples = load_dataset(args.dataset, limit=args.num)
    reqs = [request_of(ex) for ex in examples]
    fns = variants(eng)
    for req in reqs[: args.warmup]:
        for f in fns.values():
            f(req)
    times: dict[str, list[int]] = {k: [] for k in fns}
    names = list(fns)
    for i, req in enumerate(reqs):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            t0 = now_ns()
            fns[name](req)
            times[name].append(now_ns() - t0)
    n_out = [len(g.token_ids) for g in eng.generate(reqs)] if eng.seq2seq else \
        [len(eng.generate([r])[0].token_ids) for r in reqs]
    # the detokenizer alone, on the same outputs (not interleaved: no model call)
    base = times["direct"]
    lines = ["| variant | p50 ms | time / direct (median over sentences) | extra per output token us (median) |",
             "|---|---|---|---|"]
    for name, ts in times.items():
        rat = statistics.median(t / b for t, b in zip(ts, base))
        per_tok = statistics.median((t - b) / 1e3 / max(n, 1) for t, b, n in zip(ts, base, n_out))
        lines.append(f"| {name} | {statistics.median(ts) / 1e6:.2f} | {rat:.3f} | {per_tok:.1f} |")
    det = []
    for g in eng.generate(reqs):
        d = Detokenizer(eng.tokenizer, eng.decode)
        t0 = now_ns()
        for tid in g.token_ids:
            d.add(tid)
        det.append((now_ns() - t0) / 1e3 / max(len(g.token_ids), 1))
    command = "python bench/ct2_overhead.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = (f"# The CTranslate2 engine's overhead: `{args.model}` {args.precision}, {args.threads} thread(s)\n\n"
            + result_header(command, rounds=1, requests=f"{len(reqs)} of `{args.dataset}`", warmup=args.warmup,
                            output_tokens_median=statistics.median(n_out))
            + "\nInterleaved sentence by sentence; every variant is timed from the request text to its output. "
            "See the script's docstring for what each variant adds.\n\n" + "\n".join(lines)
            + f"\n\nThe incremental detokenizer alone (`Detokenizer.add`, the same outputs, not interleaved): "
            f"median {statistics.median(det):.1f} us per token.\n")
    print(text)
    write_text_atomic(Path(args.out), text)
    eng.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
