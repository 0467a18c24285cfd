"""Engines x precisions, side by side in one run: latency at batch 1, batch throughput, BLEU/chrF.

Configurations (:func:`configurations`, a list of :class:`Config`): every registered engine whose
runtime is installed, with every precision it declares for the CPU (so a precision another
change registers, like ``int8-auto``, is picked up as it is), each ``--pruning`` spec where the
engine runs pruned models, the settings :data:`VARIANTS` (ONNX Runtime with thread spinning on,
with IO binding), ``--add engine/precision[/option=value...]`` configurations, and the references:
**CTranslate2 called directly** (``ct2-direct``, int8 and fp32: :class:`Direct`), the peer to beat.

All configurations are loaded into this one process; with ``--isolate`` each runs in its own
(:class:`Worker`), as a deployment runs one model.  Per configuration, after
warm-up, interleaved sentence by sentence (every configuration runs sentence i before any runs
sentence i+1, the starting one rotating; ``--rounds`` passes, each over every rounds-th sentence),
so a noisy machine's drift hits all alike:

* **streamed** (the testbed's ``Engine.stream``): E2E p50/p90, TTFT p50, TPOT p50 (METRICS.md);
* **non-streamed** latency: one call for the sentence, wall time from before tokenisation to
  the decoded text (``Engine.generate([request])``; for ``ct2-direct``, ``translate_batch`` /
  ``generate_batch``): the like-for-like comparison with CTranslate2 called directly;
* ``ct2-direct`` has no stream: its TTFT is the same call with 1 new token, its TPOT per sentence
  ``(t_full - t_first) / (N - 1)`` (N >= 2; the median over sentences);
* **TPOT split**: *overhead* is the same configuration's TPOT on the model's skeleton
  (:mod:`testbed.skeleton`: the same architecture, vocabulary, tokenizer and decoding spec, one
  layer each side at width 16, EOS silenced so each request runs ``--skeleton-tokens`` tokens),
  measured every ``--skeleton-every``-th sentence in the same interleaved loop: the runtime call,
  binding, vocabulary-sized logits and their copy/argmax, Python and the stream; *compute* is
  TPOT minus it (the layers' arithmetic);
* ratios to **CT2 int8 direct at the same thread count** (``ct2-direct/int8/tN``) and to torch fp32
  (same thread count): non-streamed latency, streamed E2E, TPOT, and sentences/s at ``--batch``
  (Offline: each chunk of ``--batch`` sentences through every configuration in turn);
* BLEU and chrF of the batch-1 outputs (streamed; ct2-direct: its own), BLEU at ``--batch``, and
  ``batch_divergence``: the fraction of sentences whose token ids at ``--batch`` differ from the
  same configuration's at batch 1 (dynamic int8 takes one activation scale over the whole batch).

    python bench/engines.py                          # marian (200 test sentences) + chat (8 prompts)
    python bench/engines.py -n 100 --rounds 1 --threads 1 --extra-threads '' --task translation
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
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
from testbed.errors import ConfigError  # noqa: E402
from testbed.eval.divergence import batch_divergence  # noqa: E402
from testbed.io import write_text_atomic  # noqa: E402
from testbed.metrics import summary as S  # noqa: E402
from testbed.metrics.accuracy import score  # noqa: E402
from testbed.metrics.steps import call_tpot_ms, split_tpot  # noqa: E402
from testbed.signature import git_sha, result_header  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIRECT = "ct2-direct"


# --------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class Config:
    """One configuration: ``engine`` is a registered engine name or :data:`DIRECT`."""

    engine: str
    precision: str
    threads: int | None
    pruning: str = "none"
    options: tuple[tuple[str, Any], ...] = ()  # engine constructor keywords (spinning=True, ...)

    @property
    def label(self) -> str:
        return (f"{self.engine}/{self.precision}" + (f"/{self.pruning}" if self.pruning != "none" else "")
                + (f"/t{self.threads}" if self.threads else "")
                + "".join(f" {k}" if v is True else f" {k}={v}" for k, v in self.options))


VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("onnxruntime", "int8", {"spinning": True}),
    ("onnxruntime", "int8", {"io_binding": True}),
    ("onnxruntime", "int8", {"greedy_loop": True}),
    ("onnxruntime", "int8", {"fuse_skip_layernorm": "all"}),
    ("onnxruntime", "int8", {"fuse_skip_layernorm": "decoder"}),
]
"""Settings variants at ``--threads`` (engine, precision, constructor keywords): extend here."""


def parse_add(spec: str, threads: int | None) -> Config:
    """``engine/precision[/key=value...]`` -> a :class:`Config` (values: ints, true/false, strings)."""
    parts = spec.split("/")
    if len(parts) < 2:
        raise SystemExit(f"--add {spec!r}: expected engine/precision[/key=value...]")
    opts: list[tuple[str, Any]] = []
    for p in parts[2:]:
        k, eq, v = p.partition("=")
        if not eq:
            raise SystemExit(f"--add {spec!r}: option {p!r} is not key=value")
        val: Any = {"true": True, "false": False}.get(v.lower(), int(v) if v.isdigit() else v)
        opts.append((k, val))
    return Config(parts[0], parts[1], threads, options=tuple(opts))


def configurations(model: str, threads: int | None, extra_threads: list[int], pruning: list[str],
                   added: list[Config]) -> list[Config]:
    from testbed.registry import resolve_model

    arch = resolve_model(model).architecture
    thread_set = [threads, *extra_threads]
    out = [Config(DIRECT, p, t) for p in ("int8", "fp32") for t in thread_set if is_available("ctranslate2")[0]]
    # fake and null are the floors of a measurement path, not serving configurations
    for name in [n for n in ENGINES if n not in ("fake", "null") and is_available(n)[0]]:
        caps = engine_class(name).capabilities
        if "cpu" not in caps.devices or arch not in caps.architectures:
            continue
        for prec in [p for p in caps.precisions if "cpu" in caps.precision_devices.get(p, caps.devices)]:
            for pr in ["none"] + (pruning if caps.pruning else []):
                for thr in thread_set if prec in ("int8", "fp32") else [threads]:
                    out.append(Config(name, prec, thr, pr))
    out += [Config(e, p, threads, options=tuple(o.items())) for e, p, o in VARIANTS if is_available(e)[0]]
    return out + added


# --------------------------------------------------------------------------- runners
class Direct:
    """CTranslate2 called directly: the tokenizer, one ``translate_batch`` / ``generate_batch`` call
    on the same converted model the ``ctranslate2`` engine loads (its options: end tokens,
    ``<pad>`` suppressed, the decoding length, ``return_end_token``, beam 1), the decoded text.
    No testbed code runs between the tokenizer and the text (the engine object only holds the
    loaded ``Translator`` / ``Generator``)."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.e: Any = create_engine(EngineConfig(**{**cfg.to_dict(), "engine": "ctranslate2"}))
        self.config = self.e.config

    def generate(self, requests: list[GenerationRequest], max_new: int | None = None) -> list[tuple[list[int], str]]:
        e = self.e
        n = max_new or self.config.max_new_tokens
        tokens = [e.tokenizer.convert_ids_to_tokens(e.encode_input(r)) for r in requests]
        opts = e._options(n)
        if e.seq2seq:
            skip = len(e.target_prefix or ())
            if skip:
                opts["target_prefix"] = [e.target_prefix] * len(tokens)
            res = e.model.translate_batch(tokens, beam_size=1, return_end_token=True, **opts)
            ids = [[int(i) for i in e.tokenizer.convert_tokens_to_ids(r.hypotheses[0])][skip:] for r in res]
        else:
            res = e.model.generate_batch(tokens, beam_size=1, return_end_token=True, **opts)
            ids = [[e._hf_id(int(i)) for i in r.sequences_ids[0]] for r in res]
        return [(i, e.decode(i)) for i in ids]

    def close(self) -> None:
        self.e.close()


@dataclass
class Row:
    cfg: Config
    runner: Engine | Direct | None = None
    skeleton: Engine | Direct | None = None
    load_s: float = 0.0
    records: list[Any] = field(default_factory=list)  # streamed (engines)
    single_ns: list[int | None] = field(default_factory=list)  # non-streamed, per sentence
    first_ns: list[int | None] = field(default_factory=list)  # direct: 1 new token
    single_ids: list[list[int] | None] = field(default_factory=list)
    single_text: list[str | None] = field(default_factory=list)
    skel_tpot: list[float] = field(default_factory=list)
    batch_ns: int = 0
    batch_n: int = 0
    batch_ids: list[list[int] | None] = field(default_factory=list)
    batch_text: list[str | None] = field(default_factory=list)
    worker: Worker | None = None  # --isolate: the process that holds runner and skeleton

    @property
    def label(self) -> str:
        return self.cfg.label

    def size(self, n: int) -> None:
        self.records, self.single_ns, self.first_ns = [None] * n, [None] * n, [None] * n
        self.single_ids, self.single_text, self.batch_ids, self.batch_text = [None] * n, [None] * n, [None] * n, \
            [None] * n


def make(cfg: Config, model: str, max_new: int) -> Engine | Direct:
    ec = EngineConfig(model=model, engine="ctranslate2" if cfg.engine == DIRECT else cfg.engine,
                      precision=cfg.precision, threads=cfg.threads, max_new_tokens=max_new, pruning=cfg.pruning)
    if cfg.engine == DIRECT:
        return Direct(ec)
    if cfg.options:
        return engine_class(cfg.engine)(ec, **dict(cfg.options)).load()  # type: ignore[call-arg]
    return create_engine(ec)


def make_skeleton(row: Row, skel: str, tokens: int) -> Engine | Direct:
    """The configuration on the skeleton; ``int8-auto`` takes the real artefact's recipe (a search on random
    weights would only measure the search: no candidate reaches the fidelity floor there)."""
    if row.cfg.precision != "int8-auto" or not isinstance(row.runner, Engine):
        return make(row.cfg, skel, tokens)
    import atexit
    import json
    import shutil
    import tempfile

    from testbed.engines.onnxruntime.contract import META
    from testbed.engines.onnxruntime.engine import int8_recipe
    from testbed.export.int8_auto import _engine, matmul_groups, quantize_variant
    from testbed.export.onnx_export import ensure_onnx

    recipe = int8_recipe(row.runner.artifact)  # type: ignore[attr-defined]
    if recipe is None:
        raise RuntimeError(f"{row.label}: the artefact's manifest has no int8-auto recipe")
    base = ensure_onnx(skel, "fp32")
    groups = matmul_groups(base, json.loads((base / META).read_text()))
    out = Path(tempfile.mkdtemp(prefix="skeleton-int8auto-"))
    atexit.register(shutil.rmtree, out, True)
    art = quantize_variant(base, out, groups, [g for g in recipe["fp32_groups"] if g in groups],
                           recipe["per_channel"], recipe["reduce_range"], recipe.get("scheme", "dynamic"))
    return _engine(art, skel, row.cfg.pruning, row.cfg.threads, tokens)


def _set_threads(runner: Engine | Direct | None) -> None:
    # torch's thread count is process-global: set it for each torch configuration's turn
    if isinstance(runner, Engine) and runner.config.threads and runner.name == "torch":
        import torch

        torch.set_num_threads(runner.config.threads)


def _timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, int]:
    t0 = now_ns()
    out = fn(*args, **kw)
    return out, now_ns() - t0


def measure_one(row: Row, ex: Example, i: int) -> None:
    """Sentence ``i`` through ``row``: streamed (engines) and non-streamed, or the two direct calls."""
    req = request_of(ex)
    r = row.runner
    if isinstance(r, Direct):
        row.first_ns[i] = _timed(r.generate, [req], max_new=1)[1]
        (out, ns) = _timed(r.generate, [req])
        row.single_ids[i], row.single_text[i] = out[0]
    else:
        assert r is not None
        row.records[i] = run_one(r, req, keep_token_ids=True)
        row.single_ids[i] = row.records[i].extra.pop("token_ids", None)
        row.single_text[i] = row.records[i].output if row.records[i].ok else None
        ns = _timed(r.generate, [req])[1]
    row.single_ns[i] = ns


def measure_skeleton(row: Row, ex: Example, tokens: int) -> None:
    """One request on the skeleton, ``tokens`` long: its TPOT is the configuration's step overhead."""
    s = row.skeleton
    if s is None:
        return
    req = request_of(ex, max_new_tokens=tokens)
    if isinstance(s, Direct):
        first = _timed(s.generate, [req], max_new=1)[1]
        (out, full) = _timed(s.generate, [req])
        t = call_tpot_ms(full, first, len(out[0][0]))
    else:
        assert s is not None
        t = S.tpot_ms(run_one(s, req))
    if t is not None:
        row.skel_tpot.append(t)


# --------------------------------------------------------------------------- the run
def load_row(row: Row, model: str, max_new: int, examples: list[Example], reqs: list[GenerationRequest],
             args: argparse.Namespace, skel: str | None) -> str | None:
    """Build ``row``'s runner (and skeleton), warm them up; the refusal, if the model cannot have it."""
    try:
        row.runner, row.load_s = _timed(make, row.cfg, model, max_new)
    except ConfigError as e:
        return str(e)
    row.load_s /= 1e9
    _set_threads(row.runner)
    row.size(len(examples))
    for ex in examples[: args.warmup]:
        measure_one(row, ex, 0)
    row.runner.generate(reqs[: args.batch])
    if skel:
        try:
            row.skeleton = make_skeleton(row, skel, args.skeleton_tokens)
        except ConfigError as e:  # e.g. int4-lossless: the skeleton's random weights lie on no block grid
            print(f"{row.label}: no skeleton, its TPOT overhead reads n/a: {e}", file=sys.stderr)
        measure_skeleton(row, examples[0], args.skeleton_tokens)
        row.skel_tpot.clear()
    return None


def measure_batch(row: Row, chunk: list[GenerationRequest]) -> tuple[list[tuple[list[int], str]], int]:
    """One Offline chunk through ``row``: each request's (ids, text), and the call's wall time."""
    assert row.runner is not None
    _set_threads(row.runner)
    gens, ns = _timed(row.runner.generate, chunk)
    return [(g.token_ids, g.text) if not isinstance(g, tuple) else g for g in gens], ns


def close_row(row: Row) -> None:
    for r in (row.runner, row.skeleton):
        if r is not None:
            r.close()


class Worker:
    """``--isolate``: one configuration in its own process, as a deployment runs one model.

    The process holds the configuration's runner and skeleton and runs :func:`measure_one`,
    :func:`measure_skeleton` and :func:`measure_batch` when told, one at a time; the driver still
    interleaves the configurations sentence by sentence, so drift hits all alike, and never runs two
    at once.  Why: in one shared process the models' memory can interfere (SmolLM2, ONNX Runtime fp32:
    a step 7% slower beside the other models than alone; CTranslate2's unchanged:
    ``bench/results/colocation.md``).  Why not by
    default: a process that sat idle while the others ran starts its next request cold, which a
    thread hand-off feels most (the CTranslate2 engine's streamed TTFT; README, Benchmarks).  Times
    are ``time.perf_counter_ns`` (CLOCK_MONOTONIC, one clock for all processes).
    """

    def __init__(self, row: Row) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # no fork of a process holding other runtimes' threads
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True, name=f"bench {row.label}")
        self.proc.start()
        child.close()

    def call(self, *msg: Any) -> Any:
        self.conn.send(msg)
        kind, value = self.conn.recv()
        if kind == "error":
            raise RuntimeError(f"worker {self.proc.name}: {value}")
        return value

    def close(self) -> None:
        try:
            self.call("close")
        except (EOFError, OSError, RuntimeError):
            pass
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()


def _serve(conn: Any) -> None:
    """A worker process's loop (see :class:`Worker`)."""
    import traceback

    row: Row | None = None
    while True:
        op, *a = conn.recv()
        try:
            if op == "load":
                row = Row(a[0])
                refusal = load_row(row, *a[1:])
                conn.send(("ok", (refusal, row.load_s)))
            elif op == "one":
                assert row is not None
                i, ex = a
                measure_one(row, ex, i)
                conn.send(("ok", (row.records[i], row.single_ns[i], row.first_ns[i], row.single_ids[i],
                                  row.single_text[i])))
            elif op == "skeleton":
                assert row is not None
                measure_skeleton(row, *a)
                conn.send(("ok", row.skel_tpot[-1:] if row.skel_tpot else []))
                row.skel_tpot.clear()
            elif op == "batch":
                assert row is not None
                conn.send(("ok", measure_batch(row, a[0])))
            elif op == "close":
                if row is not None:
                    close_row(row)
                conn.send(("ok", None))
                return
        except Exception:  # noqa: BLE001 - the driver reports it with the configuration's name
            conn.send(("error", traceback.format_exc()))


def run(rows: list[Row], examples: list[Example], model: str, max_new: int, args: argparse.Namespace) -> list[str]:
    """Measure ``rows`` (a configuration the model cannot have is removed from ``rows``: returned, with
    the reason, e.g. int4-lossless on weights that were never GGUF blocks)."""
    from tqdm import tqdm

    from testbed.registry import resolve_model
    from testbed.skeleton import skeleton_dir

    skel = str(skeleton_dir(resolve_model(model))) if args.skeleton_every else None
    n, reqs = len(examples), [GenerationRequest(text=ex.text, messages=ex.messages) for ex in examples]
    refused: list[str] = []
    for row in tqdm(list(rows), desc="load + warm-up", disable=args.no_progress):
        if args.isolate:
            row.worker = Worker(row)
            refusal, row.load_s = row.worker.call("load", row.cfg, model, max_new, examples, reqs, args, skel)
            row.size(n)
        else:
            refusal = load_row(row, model, max_new, examples, reqs, args, skel)
        if refusal is not None:
            print(f"{row.label}: refused: {refusal}", file=sys.stderr)
            refused.append(f"{row.label} ({refusal})")
            rows.remove(row)
            if row.worker is not None:
                row.worker.close()
    rounds = min(args.rounds, n)
    bar = tqdm(total=n, desc="batch-1 latency (interleaved)", disable=args.no_progress)
    for r in range(rounds):
        for i in range(r, n, rounds):
            k = i % len(rows)
            for row in rows[k:] + rows[:k]:
                skeleton = bool(skel) and i % args.skeleton_every == 0
                if row.worker is None:
                    _set_threads(row.runner)
                    measure_one(row, examples[i], i)
                    if skeleton:
                        measure_skeleton(row, examples[i], args.skeleton_tokens)
                    continue
                (row.records[i], row.single_ns[i], row.first_ns[i], row.single_ids[i],
                 row.single_text[i]) = row.worker.call("one", i, examples[i])
                if skeleton:
                    row.skel_tpot += row.worker.call("skeleton", examples[i], args.skeleton_tokens)
            bar.update(1)
    bar.close()
    # Offline throughput: each chunk of `batch` sentences through every configuration in turn
    for c, k in enumerate(range(0, n, args.batch)):
        chunk = reqs[k : k + args.batch]
        j = c % len(rows)
        for row in rows[j:] + rows[:j]:
            pairs, ns = row.worker.call("batch", chunk) if row.worker is not None else measure_batch(row, chunk)
            row.batch_ns += ns
            row.batch_n += len(chunk)
            for j2, (ids, text) in enumerate(pairs):
                row.batch_ids[k + j2], row.batch_text[k + j2] = ids, text
    return refused


# --------------------------------------------------------------------------- the tables
def _ms(values: list[Any], p: float = 50) -> float | None:
    return S.percentiles(values, ps=(p,))[f"p{p:g}"]


def row_stats(row: Row, refs: list[str | None], translation: bool) -> dict[str, Any]:
    n = len(row.single_ns)
    if row.cfg.engine == DIRECT:
        ok = [i for i in range(n) if row.single_ns[i] is not None]
        st: dict[str, Any] = {
            "e2e50": None, "e2e90": None, "failed": n - len(ok),
            "ttft": _ms([row.first_ns[i] / 1e6 for i in ok if row.first_ns[i] is not None]),
            "tpot": _ms([call_tpot_ms(row.single_ns[i], row.first_ns[i], len(row.single_ids[i] or ())) for i in ok]),
        }
    else:
        recs = row.records
        e2e = S.percentiles(map(S.e2e_ms, recs), ps=(50, 90))
        st = {"e2e50": e2e["p50"], "e2e90": e2e["p90"], "failed": sum(1 for r in recs if not r.ok),
              "ttft": _ms(list(map(S.ttft_ms, recs))), "tpot": _ms(list(map(S.tpot_ms, recs)))}
    st["lat50"] = _ms([None if v is None else v / 1e6 for v in row.single_ns])
    st["overhead"], st["compute"] = split_tpot(st["tpot"], _ms(row.skel_tpot) if row.skel_tpot else None)
    st["sps"] = row.batch_n / (row.batch_ns / 1e9) if row.batch_ns else None
    pairs = [(a, b) for a, b in zip(row.single_ids, row.batch_ids) if a is not None and b is not None]
    st["divergence"] = batch_divergence([a for a, _ in pairs], [b for _, b in pairs])
    if translation and all(r is not None for r in refs) and all(t is not None for t in row.single_text):
        acc = score([str(t) for t in row.single_text], [str(x) for x in refs])
        st.update(bleu=acc["bleu"], chrf=acc["chrf"])
        if all(t is not None for t in row.batch_text):
            st["bleu_batch"] = score([str(t) for t in row.batch_text], [str(x) for x in refs])["bleu"]
    return st


def reference(stats: dict[Config, dict[str, Any]], cfg: Config, engine: str, precision: str) -> dict[str, Any] | None:
    """The ``engine/precision`` row at ``cfg``'s thread count (else the first such row), no options."""
    cands = [c for c in stats if c.engine == engine and c.precision == precision and c.pruning == "none"
             and not c.options]
    same = [c for c in cands if c.threads == cfg.threads]
    pick = (same or cands or [None])[0]
    return stats[pick] if pick is not None else None


def ratio(v: float | None, base: dict[str, Any] | None, key: str) -> str:
    b = base.get(key) if base else None
    return f"{v / b:.2f}" if v is not None and b else "n/a"


COLUMNS = ("| config | E2E p50 ms (streamed) | E2E p90 ms | TTFT p50 ms | TPOT p50 ms | TPOT overhead ms "
           "| TPOT compute ms | latency p50 ms (non-streamed) | latency / CT2 int8 direct "
           "| E2E (streamed) / CT2 int8 direct | TPOT / CT2 int8 direct | E2E / torch fp32 | sent/s @batch "
           "| thr / CT2 int8 direct | thr / torch fp32 | failed | batch_divergence |")


def table(rows: list[Row], examples: list[Example], translation: bool) -> tuple[str, dict[Config, dict[str, Any]]]:
    refs = [ex.reference for ex in examples]
    stats = {row.cfg: row_stats(row, refs, translation) for row in rows}
    head = COLUMNS + (" BLEU (batch 1) | BLEU (@batch) | chrF |" if translation else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for cfg, st in stats.items():
        if st["lat50"] is None and st["e2e50"] is None:
            lines.append(f"| {cfg.label} | all {st['failed']} requests failed |")
            continue
        ct2 = reference(stats, cfg, DIRECT, "int8")
        t32 = reference(stats, cfg, "torch", "fp32")
        acc = (f" {S.fmt(st.get('bleu'))} | {S.fmt(st.get('bleu_batch'))} | {S.fmt(st.get('chrf'))} |"
               if translation else "")
        div = st["divergence"]
        lines.append(
            f"| {cfg.label} | {S.fmt(st['e2e50'])} | {S.fmt(st['e2e90'])} | {S.fmt(st['ttft'])} | {S.fmt(st['tpot'])} "
            f"| {S.fmt(st['overhead'], '.3f')} | {S.fmt(st['compute'], '.3f')} | {S.fmt(st['lat50'])} "
            f"| {ratio(st['lat50'], ct2, 'lat50')} | {ratio(st['e2e50'], ct2, 'lat50')} "
            f"| {ratio(st['tpot'], ct2, 'tpot')} | {ratio(st['e2e50'], t32, 'e2e50')} | {S.fmt(st['sps'], '.1f')} "
            f"| {ratio(st['sps'], ct2, 'sps')} | {ratio(st['sps'], t32, 'sps')} | {st['failed']} "
            f"| {'n/a' if div is None else f'{100 * div:.0f}%'} |{acc}")
    return "\n".join(lines), stats


def header(command: str, model: str, n: int, dataset: str, args: argparse.Namespace, max_new: int,
           rows: list[Row], refused: list[str] | None = None) -> str:
    loads = ", ".join(f"{r.label} {r.load_s:.1f} s" for r in rows)
    every = args.skeleton_every
    return (f"# Engines side by side: `{model}`\n\n"
            + result_header(command, rounds=args.rounds, requests=f"{n} of `{dataset}`", batch=args.batch,
                            skeleton=(f"TPOT overhead from every {every}th request, {args.skeleton_tokens} tokens, "
                                      "on the model's skeleton (testbed.skeleton)") if every else "not measured")
            + f"\nGreedy, max {max_new} new tokens, "
            + ("each configuration in its own process" if args.isolate else "in one process")
            + ".  Batch 1 interleaved sentence by sentence "
            f"(after warm-up): *streamed* through `Engine.stream` (E2E, TTFT, TPOT as in METRICS.md) and "
            "*non-streamed* (one `Engine.generate([request])` call, tokenizer to text; for `ct2-direct` one "
            "`translate_batch`/`generate_batch` call on the same converted model: its TTFT is the call with 1 new "
            "token, its TPOT `(t_full - t_first)/(N-1)`).  *TPOT overhead*: the configuration's TPOT on the "
            "model's skeleton (1 layer each side at width 16, same vocabulary and decoding); *compute* = TPOT - "
            f"overhead.  Batch {args.batch}: Offline, interleaved chunk by chunk.  Ratios are to the reference at the "
            "same thread count: < 1 faster (latency, E2E, TPOT), > 1 more throughput (thr).  `batch_divergence`: "
            f"sentences whose token ids at batch {args.batch} differ from batch 1.  Ratios measured on this CPU are "
            f"not claims about another.  Load + build (excluded): {loads}."
            + (f"  Refused by this model (not measured): {'; '.join(refused)}." if refused else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--task", choices=["translation", "chat", "both"], default="both")
    ap.add_argument("--model", default="marian-en-de")
    ap.add_argument("--chat-model", default="smollm2-135m-instruct")
    ap.add_argument("-n", "--num", type=int, default=200, help="test sentences (default 200)")
    ap.add_argument("--chat-n", type=int, default=8, help="chat prompts (default 8)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extra-threads", default="1", help="comma-separated extra thread counts for fp32/int8 rows")
    ap.add_argument("--pruning", default="", help="comma-separated pruning specs for engines that run them")
    ap.add_argument("--add", action="append", default=[], metavar="ENGINE/PRECISION[/KEY=VALUE...]",
                    help="one more configuration at --threads (repeatable), e.g. onnxruntime/int8/graph_opt=basic")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--chat-max-new-tokens", type=int, default=48)
    ap.add_argument("--skeleton-every", type=int, default=4, help="measure the skeleton every k-th request (0: off)")
    ap.add_argument("--skeleton-tokens", type=int, default=32)
    ap.add_argument("--skip", default="bf16", help="comma-separated label substrings to leave out (default: bf16)")
    ap.add_argument("--only", default="", help="comma-separated label substrings to keep (references always kept)")
    ap.add_argument("--isolate", action="store_true",
                    help="each configuration in its own process (default: all in this one)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    git_sha()  # the tree measured is the one at the start (cached): later edits do not relabel the run

    def split(s: str) -> list[str]:
        return [x for x in s.split(",") if x.strip()]

    extra, pruning, only, skip = [int(x) for x in split(args.extra_threads)], split(args.pruning), split(args.only), \
        split(args.skip)
    if only:
        only += ["torch/fp32", f"{DIRECT}/int8"]
    added = [parse_add(a, args.threads) for a in args.add]
    out = Path(args.out)
    jobs = []
    if args.task in ("translation", "both"):
        jobs.append((args.model, "test", args.num, args.max_new_tokens, True, "engines_marian.md"))
    if args.task in ("chat", "both"):
        jobs.append((args.chat_model, "chat", args.chat_n, args.chat_max_new_tokens, False, "engines_chat.md"))
    for model, dataset, n, max_new, translation, fname in jobs:
        examples = load_dataset(dataset, limit=n)
        cfgs = [c for c in configurations(model, args.threads, extra, pruning, added)
                if not any(x in c.label for x in skip) and (not only or any(o in c.label for o in only))]
        rows = [Row(c) for c in cfgs]
        print(f"{model}: {len(rows)} configurations: {', '.join(r.label for r in rows)}", file=sys.stderr)
        refused = run(rows, examples, model, max_new, args)
        md, _ = table(rows, examples, translation)
        command = "python bench/engines.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        text = header(command, model, len(examples), dataset, args, max_new, rows, refused) + "\n\n" + md + "\n"
        print("\n" + text)
        write_text_atomic(out / fname, text)
        for row in rows:
            row.worker.close() if row.worker is not None else close_row(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
