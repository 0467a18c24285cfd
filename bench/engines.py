"""Engines x precisions, side by side in one run: latency at batch 1, batch throughput, BLEU/chrF.

Every registered engine whose runtime is installed runs every precision it declares for the CPU
(and each ``--pruning`` spec where it runs pruned models), plus a few settings variants (ONNX
Runtime with thread spinning on, and with IO binding on the CPU; ``--extra-threads``).
CTranslate2 (the ``ctranslate2`` engine) is the peer to beat.

Per configuration, after warm-up: per-sentence greedy decoding at batch 1 (SingleStream: median
and p90 E2E, median TTFT and TPOT), interleaved sentence by sentence (every configuration runs
sentence i before any runs sentence i+1; ``--rounds`` passes, each over every rounds-th
sentence), and sentences/s at ``--batch``, interleaved chunk by chunk, so a noisy machine's
drift hits all alike; ratios to torch fp32 and to CTranslate2 int8; BLEU and chrF of the batch-1 outputs
of the same sentences, BLEU of the batched outputs, and ``batch_divergence``: the fraction of sentences
whose token ids at ``--batch`` differ from the same configuration's at batch 1 (dynamic int8 takes one
activation scale over the whole batch, so its outputs depend on the batch; fp32 should give 0).  The
chat table (SmolLM2) gives TTFT / TPOT / E2E on chat prompts.

    python bench/engines.py                          # marian (200 test sentences) + chat (8 prompts)
    python bench/engines.py -n 60 --rounds 3 --task translation
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from testbed.client.inproc import request_of, run_one  # noqa: E402
from testbed.clock import now_ns  # noqa: E402
from testbed.config import EngineConfig  # noqa: E402
from testbed.datasets import Example, load_dataset  # noqa: E402
from testbed.engines.base import Engine, GenerationRequest  # noqa: E402
from testbed.engines.registry import ENGINES, create_engine, engine_class, is_available  # noqa: E402
from testbed.eval.divergence import batch_divergence  # noqa: E402
from testbed.io import write_text_atomic  # noqa: E402
from testbed.metrics import summary as S  # noqa: E402
from testbed.metrics.accuracy import score  # noqa: E402
from testbed.signature import git_sha, result_header  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- configurations
@dataclass
class Row:
    label: str
    make: Callable[[], Engine]
    engine: Engine | None = None
    records: list[Any] = field(default_factory=list)
    batch_ns: int = 0
    batch_n: int = 0
    load_s: float = 0.0
    single_ids: list[list[int] | None] = field(default_factory=list)  # batch 1, per sentence
    batch_ids: list[list[int] | None] = field(default_factory=list)  # at --batch, per sentence
    batch_text: list[str | None] = field(default_factory=list)


def configurations(model: str, threads: int | None, extra_threads: list[int], pruning: list[str],
                   max_new: int, only: list[str]) -> list[Row]:
    from testbed.registry import resolve_model

    arch = resolve_model(model).architecture
    rows: list[Row] = []

    def add(label: str, make: Callable[[], Engine]) -> None:
        if not only or any(o in label for o in only):
            rows.append(Row(label, make))

    # fake and null are the floors of a measurement path, not serving configurations
    names = [n for n in ENGINES if n not in ("fake", "null") and is_available(n)[0]]
    for name in names:
        cls: type[Engine] = engine_class(name)
        caps = cls.capabilities
        if "cpu" not in caps.devices or arch not in caps.architectures:
            continue
        precs = [p for p in caps.precisions if "cpu" in caps.precision_devices.get(p, caps.devices)]
        prunings = ["none"] + (pruning if caps.pruning else [])
        for prec in precs:
            for pr in prunings:
                for thr in [threads, *extra_threads] if prec in ("int8", "fp32") else [threads]:
                    cfg = EngineConfig(model=model, engine=cls.name, precision=prec, threads=thr,
                                       max_new_tokens=max_new, pruning=pr)
                    label = f"{cls.name}/{prec}" + (f"/{pr}" if pr != "none" else "") + (f"/t{thr}" if thr else "")
                    add(label, lambda cfg=cfg: create_engine(cfg))
        if cls.name == "onnxruntime":
            cfg = EngineConfig(model=model, engine="onnxruntime", precision="int8", threads=threads,
                               max_new_tokens=max_new)
            add(f"onnxruntime/int8/t{threads} spinning", lambda cfg=cfg: engine_class("onnxruntime")(
                cfg, spinning=True).load())  # type: ignore[call-arg]
            add(f"onnxruntime/int8/t{threads} iobinding", lambda cfg=cfg: engine_class("onnxruntime")(
                cfg, io_binding=True).load())  # type: ignore[call-arg]
    return rows


def _set_threads(eng: Engine) -> None:
    # torch's thread count is process-global: set it for each torch configuration's turn
    if eng.config.threads and eng.name == "torch":
        import torch

        torch.set_num_threads(eng.config.threads)


# --------------------------------------------------------------------------- the run
def run(rows: list[Row], examples: list[Example], rounds: int, warmup: int, batch: int, progress: bool) -> None:
    from tqdm import tqdm

    for row in tqdm(rows, desc="load + warm-up", disable=not progress):
        t0 = now_ns()
        row.engine = row.make()
        row.load_s = (now_ns() - t0) / 1e9
        _set_threads(row.engine)
        for ex in examples[:warmup]:
            run_one(row.engine, request_of(ex), warmup=True)
        row.engine.generate([GenerationRequest(text=ex.text, messages=ex.messages) for ex in examples[:batch]])
        row.records = [None] * len(examples)
        row.single_ids = [None] * len(examples)
        row.batch_ids = [None] * len(examples)
        row.batch_text = [None] * len(examples)
    # latency: sentence by sentence, every configuration in turn (the starting one rotates), so
    # the drift of a shared machine hits all configurations alike; `rounds` passes over the set
    bar = tqdm(total=rounds * len(examples), desc="batch-1 latency (interleaved)", disable=not progress)
    for r in range(rounds):
        for i in range(r, len(examples), rounds):
            k = i % len(rows)
            for row in rows[k:] + rows[:k]:
                assert row.engine is not None
                _set_threads(row.engine)
                row.records[i] = run_one(row.engine, request_of(examples[i]), keep_token_ids=True)
                row.single_ids[i] = row.records[i].extra.pop("token_ids", None)
            bar.update(1)
    bar.close()
    # throughput: each chunk of `batch` sentences through every configuration in turn
    reqs = [GenerationRequest(text=ex.text, messages=ex.messages) for ex in examples]
    for c, k in enumerate(range(0, len(reqs), batch)):
        chunk = reqs[k : k + batch]
        j = c % len(rows)
        for row in rows[j:] + rows[:j]:
            assert row.engine is not None
            _set_threads(row.engine)
            t0 = now_ns()
            gens = row.engine.generate(chunk)
            row.batch_ns += now_ns() - t0
            row.batch_n += len(chunk)
            for j, g in enumerate(gens):
                row.batch_ids[k + j], row.batch_text[k + j] = g.token_ids, g.text


def table(rows: list[Row], examples: list[Example], translation: bool) -> tuple[str, dict[str, Any]]:
    refs = [ex.reference for ex in examples]
    stats: dict[str, dict[str, Any]] = {}
    for row in rows:
        recs = row.records
        e2e = S.percentiles(map(S.e2e_ms, recs), ps=(50, 90))
        st: dict[str, Any] = {
            "e2e50": e2e["p50"], "e2e90": e2e["p90"],
            "ttft": S.percentiles(map(S.ttft_ms, recs), ps=(50,))["p50"],
            "tpot": S.percentiles(map(S.tpot_ms, recs), ps=(50,))["p50"],
            "failed": sum(1 for r in recs if not r.ok),
            "sps": row.batch_n / (row.batch_ns / 1e9) if row.batch_ns else None,
        }
        pairs = [(a, b) for a, b in zip(row.single_ids, row.batch_ids) if a is not None and b is not None]
        st["divergence"] = batch_divergence([a for a, _ in pairs], [b for _, b in pairs])
        if translation and all(r is not None for r in refs) and st["failed"] < len(recs):
            acc = score([r.output or "" for r in recs], [str(x) for x in refs])
            st.update(bleu=acc["bleu"], chrf=acc["chrf"])
            if all(t is not None for t in row.batch_text):
                st["bleu_batch"] = score([str(t) for t in row.batch_text], [str(x) for x in refs])["bleu"]
        stats[row.label] = st

    def find(prefix: str) -> dict[str, Any] | None:
        for label, st in stats.items():
            if label.startswith(prefix) and "spinning" not in label and st["e2e50"] is not None:
                return st
        return None

    torch32, ct2i8 = find("torch/fp32"), find("ctranslate2/int8")

    def ratio(v: float | None, base: dict[str, Any] | None, key: str) -> str:
        b = base.get(key) if base else None
        return f"{v / b:.2f}" if v is not None and b else "n/a"

    head = ("| config | E2E p50 ms | E2E p90 ms | TTFT p50 ms | TPOT p50 ms | E2E / torch fp32 | E2E / CT2 int8 "
            f"| sent/s @batch | thr / torch fp32 | thr / CT2 int8 | failed | batch_divergence "
            f"|{' BLEU (batch 1) | BLEU (@batch) | chrF |' if translation else ''}")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, st in stats.items():
        if st["e2e50"] is None:
            lines.append(f"| {label} | all {st['failed']} requests failed |")
            continue
        acc = (f" {S.fmt(st.get('bleu'))} | {S.fmt(st.get('bleu_batch'))} | {S.fmt(st.get('chrf'))} |"
               if translation else "")
        div = st["divergence"]
        sps = st["sps"]
        thr_t = f"{sps / torch32['sps']:.2f}" if sps and torch32 and torch32["sps"] else "n/a"
        thr_c = f"{sps / ct2i8['sps']:.2f}" if sps and ct2i8 and ct2i8["sps"] else "n/a"
        lines.append(
            f"| {label} | {S.fmt(st['e2e50'])} | {S.fmt(st['e2e90'])} | {S.fmt(st['ttft'])} | {S.fmt(st['tpot'])} "
            f"| {ratio(st['e2e50'], torch32, 'e2e50')} | {ratio(st['e2e50'], ct2i8, 'e2e50')} "
            f"| {S.fmt(sps, '.1f')} | {thr_t} | {thr_c} | {st['failed']} "
            f"| {'n/a' if div is None else f'{100 * div:.0f}%'} |{acc}")
    return "\n".join(lines), stats


def header(command: str, model: str, n: int, dataset: str, rounds: int, batch: int, max_new: int,
           rows: list[Row]) -> str:
    loads = ", ".join(f"{r.label} {r.load_s:.1f} s" for r in rows)
    return (f"# Engines side by side: `{model}`\n\n"
            + result_header(command, rounds=rounds, requests=f"{n} of `{dataset}`", batch=batch)
            + f"\nGreedy, max {max_new} new tokens; batch 1 (SingleStream after warm-up, interleaved sentence "
            f"by sentence) and batch {batch} (interleaved chunk by chunk), in one process.  Ratios < 1 are "
            "faster (E2E) / > 1 more throughput.  `batch_divergence`: sentences whose token ids at batch "
            f"{batch} differ from batch 1.  Ratios measured on this CPU are not claims about another.  "
            f"Load + build (excluded): {loads}.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--task", choices=["translation", "chat", "both"], default="both")
    ap.add_argument("--model", default="marian-en-de")
    ap.add_argument("--chat-model", default="smollm2-135m-instruct")
    ap.add_argument("-n", "--num", type=int, default=200, help="test sentences (default 200)")
    ap.add_argument("--chat-n", type=int, default=8, help="chat prompts (default 8)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extra-threads", default="1", help="comma-separated extra thread counts for fp32/int8 rows")
    ap.add_argument("--pruning", default="", help="comma-separated pruning specs for engines that run them")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--chat-max-new-tokens", type=int, default=48)
    ap.add_argument("--skip", default="bf16", help="comma-separated label substrings to leave out (default: bf16)")
    ap.add_argument("--only", default="", help="comma-separated label substrings to keep (torch/fp32 always kept)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    git_sha()  # the tree measured is the one at the start (cached): later edits do not relabel the run

    extra = [int(x) for x in args.extra_threads.split(",") if x.strip()]
    pruning = [x for x in args.pruning.split(",") if x.strip()]
    only = [x for x in args.only.split(",") if x.strip()]
    skip = [x for x in args.skip.split(",") if x.strip()]
    if only:
        only += ["torch/fp32", "ctranslate2/int8"]
    out = Path(args.out)
    jobs = []
    if args.task in ("translation", "both"):
        jobs.append((args.model, "test", args.num, args.max_new_tokens, True, "engines_marian.md"))
    if args.task in ("chat", "both"):
        jobs.append((args.chat_model, "chat", args.chat_n, args.chat_max_new_tokens, False, "engines_chat.md"))
    for model, dataset, n, max_new, translation, fname in jobs:
        examples = load_dataset(dataset, limit=n)
        rows = [r for r in configurations(model, args.threads, extra, pruning, max_new, only)
                if not any(x in r.label for x in skip)]
        print(f"{model}: {len(rows)} configurations: {', '.join(r.label for r in rows)}", file=sys.stderr)
        run(rows, examples, min(args.rounds, len(examples)), args.warmup, args.batch, not args.no_progress)
        md, _ = table(rows, examples, translation)
        command = "python bench/engines.py " + " ".join(argv if argv is not None else sys.argv[1:])
        head = header(command, model, len(examples), dataset, args.rounds, args.batch, max_new, rows)
        text = head + "\n\n" + md + "\n"
        print("\n" + text)
        write_text_atomic(out / fname, text)
        for row in rows:
            if row.engine is not None:
                row.engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
