"""The sweep runner: every configuration of a sweep through Offline, SingleStream and the gate.

For each configuration (the fp32 reference first), in one process, one at a time:

1. the engine is created and loaded (its artefact built or reused by the engine; load time kept).
   An engine that is not registered or not installed, or that refuses the configuration
   (``ConfigError`` / ``MissingExtraError``: e.g. pruning it does not run yet, CUDA absent), is
   recorded as ``skipped`` with the reason; any other error as ``failed`` with the error.  Either
   way the sweep goes on;
2. **SingleStream** (:func:`testbed.client.inproc.singlestream`): ``warmup`` requests run and
   excluded, then the first ``singlestream.num_requests`` examples one at a time -> TTFT / TPOT /
   E2E percentiles (METRICS.md);
3. **Offline**: the first ``offline.num_examples`` examples, all available at once, decoded in
   batches of ``batch`` formed over the set sorted by source length (as an Offline server may
   order its queue) -> sentences/s and output tokens/s over the wall time of the whole set;
4. **accuracy on the Offline outputs** -- the same, stated set for every configuration:
   sacreBLEU / chrF against the references and against the fp32 reference's outputs (fidelity),
   the length ratio ``sum(N) / sum(N_fp32)`` from token ids, the paired-bootstrap 95% interval of
   ``BLEU - BLEU_fp32``, and the gate (:func:`testbed.eval.gate.gate`).

Outputs in the run directory (written atomically): ``results.jsonl`` (one row per configuration,
rewritten whole through a temporary file after each configuration, so a kill never loses a
finished row nor leaves half a line), ``outputs/<key>.jsonl`` (every Offline output with its token
count) and ``records/<key>.jsonl`` (the raw SingleStream records), ``sweep.json`` (the validated
sweep), and the report (:mod:`testbed.eval.report`).

Resume: a row is found by its key (configuration + the sweep's shared settings).  A rerun skips
every ``ok`` row and reruns ``failed`` and ``skipped`` ones (an engine may have been installed
since).  A run directory that holds another sweep's rows is refused.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from testbed.client.inproc import request_of, singlestream
from testbed.config import EngineConfig
from testbed.datasets import Example
from testbed.engines.base import Engine
from testbed.errors import ConfigError, MissingExtraError, TestbedError
from testbed.eval.gate import gate, length_ratio, paired_bootstrap
from testbed.eval.sweep import ServingConfig, Sweep, SweepError
from testbed.io import write_json_atomic, write_text_atomic
from testbed.metrics import summary as S
from testbed.metrics.accuracy import score
from testbed.signature import signature

RESULTS = "results.jsonl"
Log = Callable[[str], None]
EngineFactory = Callable[[EngineConfig], Engine]


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------- results file
def read_rows(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / RESULTS
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TestbedError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    return rows


def write_rows(out_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_text_atomic(out_dir / RESULTS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _upsert(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    for i, r in enumerate(rows):
        if r.get("key") == row["key"]:
            rows[i] = row
            return
    rows.append(row)


def read_outputs(out_dir: Path, key: str) -> list[dict[str, Any]] | None:
    path = out_dir / "outputs" / f"{key}.jsonl"
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------------------- scenarios
def offline(
    engine: Engine, examples: Sequence[Example], batch: int, max_new_tokens: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Decode every example in batches; returns the outputs (input order) and the wall time in ns.

    Batches are formed over the examples sorted by source length (an Offline server owns its
    queue order; it keeps padding low).  The time runs from before the first batch to after the
    last, on the engine's clock.
    """
    def size(ex: Example) -> int:
        return len(ex.text) if ex.text is not None else len(json.dumps(ex.messages))

    order = sorted(range(len(examples)), key=lambda i: size(examples[i]))
    outs: list[dict[str, Any] | None] = [None] * len(examples)
    t0 = engine.clock()
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        gens = engine.generate([request_of(examples[i], max_new_tokens) for i in chunk])
        for i, g in zip(chunk, gens):
            outs[i] = {"id": examples[i].id, "output": g.text, "n_out": len(g.token_ids),
                       "finish_reason": g.finish_reason}
        if progress:
            progress(len(chunk))
    elapsed = engine.clock() - t0
    return [o for o in outs if o is not None], elapsed


def accuracy(
    sweep: Sweep, outputs: Sequence[dict[str, Any]], ref_outputs: Sequence[dict[str, Any]] | None,
    ref_error: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Scores of the Offline outputs (vs references, vs fp32), the length ratio, the bootstrap, the gate."""
    hyps = [o["output"] for o in outputs]
    refs = [e.reference for e in sweep.offline_set]
    acc: dict[str, Any] = {"set": f"offline: first {len(hyps)} examples of {sweep.dataset}",
                           "vs_references": None, "vs_fp32": None, "length_ratio": None, "bleu_diff": None}
    has_refs = all(r is not None for r in refs)
    if has_refs:
        acc["vs_references"] = score(hyps, [str(r) for r in refs], ndigits=None)
    if ref_outputs is not None:
        fp32 = [o["output"] for o in ref_outputs]
        acc["vs_fp32"] = score(hyps, fp32, ndigits=None)
        acc["length_ratio"] = length_ratio([o["n_out"] for o in outputs], [o["n_out"] for o in ref_outputs])
        if has_refs:
            acc["bleu_diff"] = paired_bootstrap(hyps, fp32, [str(r) for r in refs],
                                                samples=sweep.bootstrap_samples, seed=sweep.seed)
    ref_bleu = None
    if ref_outputs is not None and has_refs:
        ref_bleu = score([o["output"] for o in ref_outputs], [str(r) for r in refs], ndigits=None)["bleu"]
    bleu = acc["vs_references"]["bleu"] if acc["vs_references"] else None
    if bleu is None and acc["vs_fp32"] is not None:
        # no human references: the gate compares BLEU against the fp32 output itself (100 = identical)
        bleu, ref_bleu = acc["vs_fp32"]["bleu"], 100.0
    g = gate(bleu, ref_bleu, acc["length_ratio"], sweep.gate_bleu_ratio, sweep.gate_length_ratio)
    if ref_outputs is None:
        g["reasons"] = [f"fp32 reference {ref_error or 'not available'}"]
    g["bleu_fp32"] = ref_bleu
    return acc, g


# ------------------------------------------------------------------------------- one configuration
def _base_row(sweep: Sweep, cfg: ServingConfig) -> dict[str, Any]:
    return {"key": sweep.key(cfg), "sweep_key": sweep.sweep_key, "sweep": sweep.name, "label": cfg.label(),
            "config": cfg.to_dict(), "is_reference": cfg == sweep.reference, "status": None,
            "error": None, "started_at": _now()}


def _sig_fields(sweep: Sweep, cfg: ServingConfig) -> dict[str, Any]:
    return {"scenarios": ["singlestream", "offline"], "dataset": sweep.dataset,
            "dataset_sha256": sweep.dataset_sha256, "offline_examples": sweep.offline_examples,
            "singlestream_requests": sweep.singlestream_requests, "warmup": sweep.warmup,
            "decoding": {"method": "greedy", "max_new_tokens": sweep.max_new_tokens}, "seed": sweep.seed}


def run_config(
    sweep: Sweep, cfg: ServingConfig, out_dir: Path, ref_outputs: list[dict[str, Any]] | None,
    ref_error: str | None = None, create: EngineFactory | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Measure one configuration; returns its row (never raises for the configuration's own errors)."""
    from testbed.engines.registry import create_engine, is_available

    row = _base_row(sweep, cfg)
    t_start = _dt.datetime.now(_dt.UTC)
    sig = _sig_fields(sweep, cfg)
    row["signature"] = signature(model=sweep.model, **cfg.to_dict(), **sig)
    available, why = is_available(cfg.engine)
    if not available:
        row.update(status="skipped", error=f"engine {cfg.engine!r}: {why}")
        return row
    try:
        engine = (create or create_engine)(cfg.engine_config(sweep.model, sweep.max_new_tokens))
    except (ConfigError, MissingExtraError) as exc:
        row.update(status="skipped", error=str(exc))
        return row
    except Exception as exc:  # recorded; the sweep goes on
        row.update(status="failed", error=f"load: {type(exc).__name__}: {exc}")
        return row

    from tqdm import tqdm

    ss_set, off_set = sweep.singlestream_set, sweep.offline_set
    bar = tqdm(total=sweep.warmup + len(ss_set) + len(off_set), desc=cfg.label(), unit="sent",
               file=sys.stderr, disable=not progress, leave=False)
    try:
        try:
            describe = engine.describe()
        except TestbedError:  # an engine without a checkpoint (the fake one) has no model hash
            describe = {**engine.config.to_dict(), "engine": cfg.engine, "model_name": engine.model_info.name,
                        "model_hash": None, "architecture": engine.model_info.architecture}
        row["signature"] = signature(**describe, model_id=f"{describe['model_name']}@{describe['model_hash']}",
                                     batch=cfg.batch, **sig)
        row["load_ms"] = engine.load_ns / 1e6 if engine.load_ns else None
        records = singlestream(engine, ss_set, warmup=sweep.warmup, max_new_tokens=sweep.max_new_tokens,
                               progress=lambda done, total: bar.update(done - bar.n))
        outputs, off_ns = offline(engine, off_set, cfg.batch, sweep.max_new_tokens, progress=bar.update)
    except Exception as exc:
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        return row
    finally:
        bar.close()
        engine.close()

    summ = S.summarize(records, scenario="singlestream").to_dict()
    cold = next((r for r in records if r.warmup), None)
    by_id = {o["id"]: o["output"] for o in outputs}
    live = [r for r in records if not r.warmup]
    same = [r.ok and by_id.get(r.request_id) == r.output for r in live]
    row["singlestream"] = {**summ, "n": len(ss_set), "first_request_e2e_ms": S.e2e_ms(cold) if cold else None,
                           "same_output_as_offline_pct": 100.0 * sum(same) / len(same) if same else None}
    total_out = sum(o["n_out"] for o in outputs)
    secs = off_ns / 1e9
    row["offline"] = {"n": len(outputs), "batch": cfg.batch, "duration_s": secs, "output_tokens": total_out,
                      "sentences_per_s": len(outputs) / secs if secs > 0 else None,
                      "tokens_per_s": total_out / secs if secs > 0 else None}
    row["accuracy"], row["gate"] = accuracy(sweep, outputs, outputs if row["is_reference"] else ref_outputs,
                                            ref_error)
    (out_dir / "outputs").mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "outputs" / f"{row['key']}.jsonl",
                      "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in outputs))
    write_text_atomic(out_dir / "records" / f"{row['key']}.jsonl", "".join(r.to_json() + "\n" for r in records))
    row["status"] = "ok"
    row["finished_at"] = _now()
    row["wall_s"] = (_dt.datetime.now(_dt.UTC) - t_start).total_seconds()
    return row


# ------------------------------------------------------------------------------- the sweep
def run_sweep(
    sweep: Sweep, out_dir: Path, resume: bool = True, progress: bool = True, log: Log | None = None,
    create: EngineFactory | None = None, render: bool = True,
) -> list[dict[str, Any]]:
    """Run (or resume) ``sweep`` into ``out_dir``; returns the rows.  See the module docstring."""
    say = log or (lambda _msg: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_rows(out_dir)
    if rows and not resume:
        prev = out_dir / (RESULTS + ".prev")
        shutil.move(str(out_dir / RESULTS), prev)
        say(f"--no-resume: the previous results were moved to {prev}")
        rows = []
    other = {r.get("sweep_key") for r in rows} - {sweep.sweep_key}
    if other:
        raise SweepError(
            f"{out_dir / RESULTS} holds results of a different sweep (other model, test set, decoding or "
            "settings): use another --out, or --no-resume to start over (the old file is kept as .prev)")
    write_json_atomic(out_dir / "sweep.json", {
        "name": sweep.name, "path": sweep.path, "description": sweep.description, "sweep_key": sweep.sweep_key,
        "settings": sweep.settings(), "configs": [{"key": sweep.key(c), **c.to_dict()} for c in sweep.configs]})

    done = {r["key"]: r for r in rows if r.get("status") == "ok"}
    ref_key = sweep.key(sweep.reference)
    ref_outputs = read_outputs(out_dir, ref_key) if ref_key in done else None
    if ref_key in done and ref_outputs is None:
        done.pop(ref_key)  # its outputs are gone: measure it again, the gate needs them
    if done:
        say(f"resuming: {len(done)} of {len(sweep.configs)} configurations already done in {out_dir}")
    ref_error: str | None = None
    for i, cfg in enumerate(sweep.configs, 1):
        key = sweep.key(cfg)
        if key in done:
            say(f"[{i}/{len(sweep.configs)}] {cfg.label()}: done earlier, kept")
            continue
        row = run_config(sweep, cfg, out_dir, ref_outputs, ref_error, create=create, progress=progress)
        if key == ref_key:
            if row["status"] == "ok":
                ref_outputs = read_outputs(out_dir, ref_key)
            else:
                ref_error = f"{row['status']}: {row['error']}"
        _upsert(rows, row)
        write_rows(out_dir, rows)
        say(f"[{i}/{len(sweep.configs)}] {cfg.label()}: {_one_line(row)}")

    # rows measured while the reference was missing get their gate now, from their stored outputs
    if ref_outputs is not None:
        changed = False
        for r in rows:
            if r.get("status") == "ok" and r.get("gate", {}).get("bleu_fp32") is None and not r.get("is_reference"):
                outs = read_outputs(out_dir, r["key"])
                if outs is not None:
                    r["accuracy"], r["gate"] = accuracy(sweep, outs, ref_outputs)
                    changed = True
        if changed:
            write_rows(out_dir, rows)
    if render:
        from testbed.eval.report import render_dir

        render_dir(out_dir)
    return rows


def _one_line(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row['error']}"
    acc, g, ss = row["accuracy"], row["gate"], row["singlestream"]
    bleu = acc["vs_references"]["bleu"] if acc.get("vs_references") else None
    verdict = {True: "pass", False: "FAIL", None: "n/a"}[g["passed"]]
    return (f"BLEU {S.fmt(bleu)}, p90 E2E {S.fmt(ss.get('p90_e2el_ms'), '.1f')} ms, "
            f"offline {S.fmt(row['offline']['sentences_per_s'], '.1f')} sent/s, gate {verdict}")
