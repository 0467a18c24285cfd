"""The sweep runner: every configuration of a sweep through Offline, batch 1, SingleStream and the gate.

Per configuration (the fp32 reference first), in one process:

1. the engine is created and loaded **once** (its artefact built or reused by the engine; load
   time kept).  An engine that is not registered or not installed, or that refuses the
   configuration (``ConfigError`` / ``MissingExtraError``: e.g. pruning it does not run yet, CUDA
   absent), is recorded as ``skipped`` with the reason; any other error as ``failed`` with the
   error.  Either way the sweep goes on;
2. **Offline** (:func:`testbed.eval.scenarios.offline`): one warm-up batch run and excluded (its
   time reported), then the first ``offline.num_examples`` examples in batches of ``batch`` ->
   sentences/s and output tokens/s;
3. **batch 1**: the first ``accuracy.divergence_examples`` of them decoded one at a time ->
   ``batch_divergence`` (the fraction whose token ids differ from the row's batch) and the BLEU of
   both (:func:`testbed.eval.scoring.divergence`);
4. **accuracy and the gate** on the Offline outputs (:func:`testbed.eval.scoring.accuracy`): the
   row is written now, with ``status = "ok"``: a kill from here on never loses it;
5. **SingleStream**: interleaved (the default): once every configuration's Offline is done, the
   loaded engines serve SingleStream in rounds (:func:`testbed.eval.scenarios.singlestream_rounds`),
   each round checkpointed to ``records/<key>.jsonl``; the rows get their latency summary at the
   end.  ``interleave = false`` (``--no-interleave``): each configuration runs SingleStream right
   after loading, before its Offline, one configuration after another (the old order).

Resume (``resume=True``): a row is found by its key (configuration + the sweep's shared settings,
which include the interleave choice).  A row whose Offline and accuracy are done is kept as it
is; if its SingleStream is unfinished, its engine is loaded again and the rounds continue from
the last checkpointed round (new warm-up rounds first, excluded; the row counts the sessions its
SingleStream spans).  ``failed`` and ``skipped`` rows are retried (an engine may have been
installed since).  A run directory that holds another sweep's rows is refused.  Files: see
:mod:`testbed.eval.results`.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed.client.inproc import singlestream
from testbed.config import EngineConfig
from testbed.engines.base import Engine
from testbed.errors import ConfigError, MissingExtraError, TestbedError
from testbed.eval.lock import RunLock
from testbed.eval.results import (
    RESULTS,
    load1,
    read_meta,
    read_outputs,
    read_records,
    read_rows,
    upsert,
    write_meta,
    write_outputs,
    write_records,
    write_rows,
)
from testbed.eval.scenarios import at_batch1, offline, offline_served, singlestream_rounds
from testbed.eval.scoring import accuracy, divergence
from testbed.eval.sweep import ServingConfig, Sweep, SweepError
from testbed.metrics.records import RequestRecord
from testbed.metrics.summary import e2e_ms, fmt, summarize
from testbed.signature import result_header, signature

__all__ = ["accuracy", "read_rows", "run_sweep", "status_counts"]

Log = Callable[[str], None]
EngineFactory = Callable[[EngineConfig], Engine]
Row = dict[str, Any]


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _tqdm(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="req", file=sys.stderr, disable=not enabled, leave=False)


def _served(cfg: ServingConfig) -> dict[str, Any]:
    """The batching axis in a row's signature (absent for the engine's own batches, as in earlier sweeps)."""
    return {} if cfg.batching == "engine" else {"batching": cfg.batching}


def _sig_fields(sweep: Sweep) -> dict[str, Any]:
    return {"scenarios": ["singlestream", "offline"], "dataset": sweep.dataset,
            "dataset_sha256": sweep.dataset_sha256, "offline_examples": sweep.offline_examples,
            "singlestream_requests": sweep.singlestream_requests, "warmup": sweep.warmup,
            "singlestream_method": "interleaved" if sweep.interleave else "sequential",
            "decoding": {"method": "greedy", "max_new_tokens": sweep.max_new_tokens}, "seed": sweep.seed}


def singlestream_summary(records: list[RequestRecord], outputs: list[Row], n: int, method: str) -> Row:
    """The row's ``singlestream`` block: METRICS.md summary plus how and under what load it was measured."""
    live = [r for r in records if not r.warmup]
    cold = next((r for r in records if r.warmup), None)
    by_id = {o["id"]: o["output"] for o in outputs}
    same = [r.ok and by_id.get(r.request_id) == r.output for r in live]
    loads = [x for r in records if (x := r.extra.get("load1")) is not None]
    return {**summarize(records, scenario="singlestream").to_dict(), "n": n, "method": method,
            "first_request_e2e_ms": e2e_ms(cold) if cold else None,
            "same_output_as_offline_pct": 100.0 * sum(same) / len(same) if same else None,
            "sessions": len({r.extra.get("session") for r in live}) or None,
            "load1_min": min(loads, default=None), "load1_max": max(loads, default=None)}


class _Run:
    """One session of a sweep: the rows, the fp32 reference's outputs and the engines it holds."""

    def __init__(self, sweep: Sweep, out_dir: Path, rows: list[Row], create: EngineFactory | None,
                 progress: bool, say: Log) -> None:
        self.sweep, self.out, self.rows, self.create, self.progress, self.say = \
            sweep, out_dir, rows, create, progress, say
        self.session = f"{_now()}/{uuid.uuid4().hex[:8]}"  # unique: two sessions may start within a second
        self.ref_key = sweep.key(sweep.reference)
        done = {r["key"]: r for r in rows if r.get("status") == "ok"}
        self.ref_outputs = read_outputs(out_dir, self.ref_key) if self.ref_key in done else None
        self.ref_error: str | None = None
        if self.ref_key in done and self.ref_outputs is None:
            done.pop(self.ref_key)  # its outputs are gone: measure it again, the gate needs them
        self.done = done

    # ----------------------------------------------------------------------------- bookkeeping
    def save(self, row: Row) -> None:
        upsert(self.rows, row)
        write_rows(self.out, self.rows)

    def finish(self, i: int, cfg: ServingConfig, row: Row) -> None:
        """A configuration's row is final: note a failed reference, save the row, say one line."""
        if self.sweep.key(cfg) == self.ref_key and row["status"] != "ok":
            self.ref_error = f"{row['status']}: {row['error']}"
        self.save(row)
        self.say(f"[{i}/{len(self.sweep.configs)}] {cfg.label()}: {_one_line(row)}")

    def base_row(self, cfg: ServingConfig) -> Row:
        sweep = self.sweep
        return {"key": sweep.key(cfg), "sweep_key": sweep.sweep_key, "sweep": sweep.name, "label": cfg.label(),
                "config": cfg.to_dict(), "is_reference": cfg == sweep.reference, "status": None, "error": None,
                "started_at": _now(),
                "signature": signature(**{"model": sweep.model, **cfg.to_dict()}, **_sig_fields(sweep)),
                "singlestream": None}

    def load(self, cfg: ServingConfig, row: Row) -> Engine | None:
        """The loaded engine, or None with the row marked ``skipped`` / ``failed`` and the reason."""
        from testbed.engines.registry import create_engine, is_available

        available, why = is_available(cfg.engine)
        if not available:
            row.update(status="skipped", error=f"engine {cfg.engine!r}: {why}")
            return None
        try:
            sw = self.sweep
            engine = (self.create or create_engine)(cfg.engine_config(sw.model, sw.max_new_tokens, sw.src_lang,
                                                                      sw.tgt_lang))
        except (ConfigError, MissingExtraError) as exc:
            row.update(status="skipped", error=str(exc))
            return None
        except Exception as exc:  # recorded; the sweep goes on
            row.update(status="failed", error=f"load: {type(exc).__name__}: {exc}")
            return None
        try:
            describe = engine.describe()
        except TestbedError:  # an engine without a checkpoint (the fake one) has no model hash
            describe = {**engine.config.to_dict(), "engine": cfg.engine, "model_name": engine.model_info.name,
                        "model_hash": None, "architecture": engine.model_info.architecture}
        row["signature"] = signature(**describe, model_id=f"{describe['model_name']}@{describe['model_hash']}",
                                     batch=cfg.batch, **_served(cfg), **_sig_fields(self.sweep))
        row["load_ms"] = engine.load_ns / 1e6 if engine.load_ns else None
        return engine

    # ----------------------------------------------------------------------------- phases
    def offline_phase(self, cfg: ServingConfig, row: Row, engine: Engine) -> bool:
        """Offline (+ warm-up batch), batch 1, accuracy, divergence -> the row (``ok`` or ``failed``)."""
        sweep, t_start = self.sweep, _dt.datetime.now(_dt.UTC)
        off_set, div_set = sweep.offline_set, sweep.divergence_set
        bar = _tqdm(len(off_set) + len(div_set), f"{cfg.label()} offline", self.progress)
        load_start = load1()
        try:
            if cfg.batching == "engine":
                outputs, off_ns, warm_ns = offline(engine, off_set, cfg.batch, sweep.max_new_tokens,
                                                   sweep.offline_warmup_batches, progress=bar.update)
            else:
                outputs, off_ns, warm_ns = offline_served(engine, off_set, cfg.batch, cfg.batching,
                                                          sweep.max_new_tokens, sweep.offline_warmup_batches,
                                                          progress=bar.update)
            batch1 = at_batch1(engine, div_set, sweep.max_new_tokens, progress=bar.update)
        except Exception as exc:
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            return False
        finally:
            bar.close()
        write_outputs(self.out, row["key"], outputs)
        write_outputs(self.out, row["key"], batch1, kind="batch1")
        (self.out / "records" / f"{row['key']}.jsonl").unlink(missing_ok=True)  # no stale rounds
        if row["is_reference"]:
            self.ref_outputs, self.ref_error = outputs, None
        total_out, secs = sum(o["n_out"] for o in outputs), off_ns / 1e9
        row["offline"] = {"n": len(outputs), "batch": cfg.batch, "batching": cfg.batching,
                          "duration_s": secs, "output_tokens": total_out,
                          "sentences_per_s": len(outputs) / secs if secs > 0 else None,
                          "tokens_per_s": total_out / secs if secs > 0 else None,
                          "warmup_batches": sweep.offline_warmup_batches, "warmup_s": warm_ns / 1e9,
                          "load1_start": load_start, "load1_end": load1()}
        self.score(row, outputs, batch1)
        row.update(status="ok", finished_at=_now(), wall_s=(_dt.datetime.now(_dt.UTC) - t_start).total_seconds())
        return True

    def score(self, row: Row, outputs: list[Row], batch1: list[Row]) -> None:
        ref, why = (outputs, None) if row["is_reference"] else (self.ref_outputs, self.ref_error)
        other = row["config"].get("model")
        if other and other != (self.sweep.reference.model or self.sweep.model):
            ref, why = None, (f"not gated: {other} is another model than the reference's "
                              f"({self.sweep.reference.model or self.sweep.model}); compared on the same prompts")
        row["accuracy"], row["gate"] = accuracy(self.sweep, outputs, ref, why)
        row["batch1"] = divergence(self.sweep, row["config"]["batch"], outputs, batch1, ref)

    def singlestream_sequential(self, row: Row, engine: Engine) -> list[RequestRecord] | None:
        sweep = self.sweep
        bar = _tqdm(sweep.warmup + len(sweep.singlestream_set), f"{row['label']} singlestream", self.progress)
        load = load1()
        try:
            records = singlestream(engine, sweep.singlestream_set, warmup=sweep.warmup,
                                   max_new_tokens=sweep.max_new_tokens,
                                   progress=lambda done, total: bar.update(done - bar.n))
        except Exception as exc:
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            return None
        finally:
            bar.close()
        for r in records:
            r.extra.update(session=self.session, load1=load)
        return records

    def singlestream_interleaved(self, engines: dict[str, Engine]) -> None:
        """Rounds across the loaded engines, checkpointed per round; then each row's summary."""
        sweep = self.sweep
        if not engines:
            return
        recs = {k: read_records(self.out, k) for k in engines}
        start = {k: sum(not r.warmup for r in v) for k, v in recs.items()}
        n = len(sweep.singlestream_set)
        total = sweep.warmup * sum(s < n for s in start.values()) + sum(n - s for s in start.values())
        self.say(f"SingleStream: {n} rounds across {len(engines)} configurations (interleaved; {sweep.warmup} "
                 f"warm-up rounds excluded){'; resuming' if any(start.values()) else ''}")
        bar = _tqdm(total, "singlestream rounds", self.progress)

        def checkpoint(_j: int, done: dict[str, RequestRecord]) -> None:
            for k, rec in done.items():
                recs[k].append(rec)
                write_records(self.out, k, recs[k])

        try:
            singlestream_rounds(engines, sweep.singlestream_set, sweep.warmup, sweep.max_new_tokens, start=start,
                                on_round=checkpoint, tag={"session": self.session}, progress=bar.update)
        finally:
            bar.close()
        for k in engines:
            row = next(r for r in self.rows if r["key"] == k)
            row["singlestream"] = singlestream_summary(recs[k], read_outputs(self.out, k) or [], n, "interleaved")
            self.save(row)

    def regate(self) -> None:
        """Rows measured while the reference was missing get their gate now, from their stored outputs."""
        if self.ref_outputs is None:
            return
        for r in self.rows:
            if r.get("status") == "ok" and (r.get("gate") or {}).get("score_fp32") is None and not r["is_reference"]:
                outs, b1 = read_outputs(self.out, r["key"]), read_outputs(self.out, r["key"], "batch1")
                if outs is not None:
                    self.score(r, outs, b1 or [])
                    self.save(r)


# ------------------------------------------------------------------------------- the sweep
def _prepare(sweep: Sweep, out_dir: Path, resume: bool, say: Log) -> list[Row]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_rows(out_dir)
    if rows and not resume:
        prev = out_dir / (RESULTS + ".prev")
        shutil.move(str(out_dir / RESULTS), prev)
        say(f"--no-resume: the previous results were moved to {prev}")
        rows = []
    if {r.get("sweep_key") for r in rows} - {sweep.sweep_key}:
        raise SweepError(
            f"{out_dir / RESULTS} holds results of a different sweep (other model, test set, decoding or "
            "settings, e.g. --no-interleave): use another --out, or --no-resume to start over (the old file is "
            "kept as .prev)")
    return rows


def _open_session(sweep: Sweep, out_dir: Path, command: str, session: str, resume: bool) -> dict[str, Any]:
    old = read_meta(out_dir)
    sessions = old.get("sessions", []) if resume and old.get("sweep_key") == sweep.sweep_key else []
    method = ("interleaved rounds across configurations" if sweep.interleave
              else "sequential, one configuration after another")
    entry = {"started_at": session.split("/")[0], "session": session, "command": command,
             "load1_start": load1(), "load1_end": None,
             "header": result_header(command, at_end=False,
                                     sweep=f"{sweep.name} ({len(sweep.configs)} configurations)",
                                     singlestream=method,
                                     rounds=f"{sweep.warmup} warm-up (excluded) + {sweep.singlestream_requests} "
                                            "SingleStream rounds; Offline once per configuration")}
    meta = {"name": sweep.name, "path": sweep.path, "description": sweep.description, "sweep_key": sweep.sweep_key,
            "settings": sweep.settings(), "configs": [{"key": sweep.key(c), **c.to_dict()} for c in sweep.configs],
            "sessions": [*sessions, entry]}
    write_meta(out_dir, meta)
    return meta


def thread_note(sweep: Sweep) -> str | None:
    """A warning when interleaving rows of one engine that differ in ``threads``.

    Every engine stays loaded in one process during the rounds; an engine whose thread setting is
    process-wide (torch's ``set_num_threads`` at load) then runs all its rows with the setting of
    the one loaded last.  Thread counts are compared with ``--no-interleave``.
    """
    if not sweep.interleave:
        return None
    threads: dict[str, set[int | None]] = {}
    for c in sweep.configs:
        threads.setdefault(c.engine, set()).add(c.threads)
    mixed = sorted(e for e, t in threads.items() if len(t) > 1)
    if not mixed:
        return None
    return (f"rows of {', '.join(mixed)} differ in threads while interleaved in one process: an engine whose "
            "thread setting is process-wide (torch) runs them all with the last one loaded; compare thread counts "
            "with --no-interleave")


def run_sweep(
    sweep: Sweep, out_dir: Path, resume: bool = True, progress: bool = True, log: Log | None = None,
    create: EngineFactory | None = None, render: bool = True, command: str | None = None,
) -> list[Row]:
    """Run (or resume) ``sweep`` into ``out_dir``; returns the rows.  See the module docstring.

    The run directory is locked for the whole run (:class:`testbed.eval.lock.RunLock`): a second
    sweep on it is refused with :class:`~testbed.eval.lock.LockedError` naming the holder.
    """
    say = log or (lambda _msg: None)
    with RunLock(out_dir, command or f"run_sweep({sweep.path!r})") as lock:
        stale = lock.stale_note()
        if stale:
            say(f"warning: {stale}")
        return _run_locked(sweep, out_dir, resume, progress, say, create, render, command)


def status_counts(sweep: Sweep, rows: list[Row]) -> dict[str, int]:
    """How this sweep's configurations ended: ``done`` (status ok), ``failed``, ``skipped``, ``missing``."""
    by_key = {r["key"]: r.get("status") for r in rows}
    out = {"done": 0, "failed": 0, "skipped": 0, "missing": 0}
    for cfg in sweep.configs:
        st = by_key.get(sweep.key(cfg))
        out["done" if st == "ok" else st if st in ("failed", "skipped") else "missing"] += 1
    return out


def _run_locked(sweep: Sweep, out_dir: Path, resume: bool, progress: bool, say: Log, create: EngineFactory | None,
                render: bool, command: str | None) -> list[Row]:
    run = _Run(sweep, out_dir, _prepare(sweep, out_dir, resume, say), create, progress, say)
    meta = _open_session(sweep, out_dir, command or f"run_sweep({sweep.path!r})", run.session, resume)
    if run.done:
        say(f"resuming: {len(run.done)} of {len(sweep.configs)} configurations already done in {out_dir}")
    note = thread_note(sweep)
    if note:
        say(f"warning: {note}")
        meta["sessions"][-1]["warning"] = note
    if sweep.interleave:
        _interleaved(run)
    else:
        _sequential(run)
    run.regate()
    meta["sessions"][-1]["load1_end"] = load1()
    meta["sessions"][-1]["finished_at"] = _now()
    write_meta(out_dir, meta)
    if render:
        from testbed.eval.report import render_dir

        render_dir(out_dir)
    return run.rows


def _sequential(run: _Run) -> None:
    configs = run.sweep.configs
    for i, cfg in enumerate(configs, 1):
        key = run.sweep.key(cfg)
        if key in run.done:
            run.say(f"[{i}/{len(configs)}] {cfg.label()}: done earlier, kept")
            continue
        row = run.base_row(cfg)
        engine = run.load(cfg, row)
        if engine is not None:
            try:
                records = run.singlestream_sequential(row, engine)
                if records is not None and run.offline_phase(cfg, row, engine):
                    write_records(run.out, key, records)
                    row["singlestream"] = singlestream_summary(
                        records, read_outputs(run.out, key) or [], len(run.sweep.singlestream_set), "sequential")
            finally:
                engine.close()
        run.finish(i, cfg, row)


def _interleaved(run: _Run) -> None:
    configs = run.sweep.configs
    engines: dict[str, Engine] = {}
    try:
        for i, cfg in enumerate(configs, 1):
            key = run.sweep.key(cfg)
            kept = run.done.get(key)
            if kept is not None and kept.get("singlestream") is not None:
                run.say(f"[{i}/{len(configs)}] {cfg.label()}: done earlier, kept")
                continue
            row = kept if kept is not None else run.base_row(cfg)
            engine = run.load(cfg, dict(row) if kept is not None else row)
            if kept is not None:  # Offline done earlier: only its SingleStream rounds are left
                if engine is None:
                    row["singlestream_error"] = "engine not available on resume"
                    run.save(row)
                else:
                    engines[key] = engine
                    run.say(f"[{i}/{len(configs)}] {cfg.label()}: Offline done earlier, kept; SingleStream pending")
                continue
            if engine is not None:
                if run.offline_phase(cfg, row, engine):
                    engines[key] = engine
                else:
                    engine.close()
            run.finish(i, cfg, row)
        run.singlestream_interleaved(engines)
    finally:
        for e in engines.values():
            e.close()


def _one_line(row: Row) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row['error']}"
    acc, g, off = row["accuracy"], row["gate"], row["offline"]
    bleu = acc["vs_references"]["bleu"] if acc.get("vs_references") else None
    div = (row.get("batch1") or {}).get("batch_divergence")
    ss = row.get("singlestream")
    lat = f"p90 E2E {fmt(ss.get('p90_e2el_ms'), '.1f')} ms, " if ss else ""
    return (f"BLEU {fmt(bleu)}, {lat}offline {fmt(off['sentences_per_s'], '.1f')} sent/s, "
            f"batch divergence {fmt(div, '.3f')}, gate {g.get('verdict') or 'n/a'}")
