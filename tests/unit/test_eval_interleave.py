"""The sweep runner's order of work, batch divergence and resume, on scripted fake engines (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.config import EngineConfig
from testbed.engines.fake.engine import EOS_ID, FakeEngine
from testbed.eval.report import markdown
from testbed.eval.results import read_meta, read_outputs, read_records, read_rows
from testbed.eval.runner import run_sweep
from testbed.eval.scenarios import rotated
from testbed.eval.sweep import load_sweep

SENTENCES = ["open the file menu and click save", "select a range of cells you want to sort",
             "press enter to confirm the new name", "a dialog closes when you click ok",
             "choose format then cells", "drag the border of the column header", "a chart wizard opens",
             "type a formula into one cell and press enter"]


def sweep_file(tmp_path: Path, configs: str, accuracy: str = "", ss: str = "") -> Path:
    data = tmp_path / "set.tsv"
    data.write_text("".join(f"doc\t{s}\t{s.replace('a', 'one', 1)}\n" for s in SENTENCES), encoding="utf-8")
    p = tmp_path / "sweep.toml"
    p.write_text('name = "t"\nmodel = "fake-en-de"\ndataset = "set.tsv"\nmax_new_tokens = 32\n'
                 f"[offline]\nnum_examples = 8\n[singlestream]\nnum_requests = 4\nwarmup = 1\n{ss}"
                 f"[accuracy]\nbootstrap_samples = 50\ndivergence_examples = 6\n{accuracy}"
                 '[reference]\nengine = "fake"\n'
                 f"[defaults]\nthreads = 1\nbatch = 3\n{configs}", encoding="utf-8")
    return p


class Killed(BaseException):
    """Stands for a SIGKILL: not an Exception, so nothing in the runner records it and goes on."""


class Logged(FakeEngine):
    """A fake engine that logs every call into a shared list (and can be told to die at a given call)."""

    log: list[tuple[str, ...]] = []
    die_at_stream: int | None = None

    def _tag(self) -> str:
        return self.config.precision

    def _load(self) -> None:
        super()._load()
        self.log.append(("load", self._tag()))

    def _decode(self, prepared):  # type: ignore[no-untyped-def]
        n_streams = sum(1 for e in self.log if e[0] == "stream")
        if self.die_at_stream is not None and n_streams == self.die_at_stream:
            raise Killed()
        self.log.append(("stream", self._tag(), self.decode(prepared.input_ids)))
        yield from super()._decode(prepared)

    def _generate_batch(self, prepared):  # type: ignore[no-untyped-def]
        self.log.append(("generate", self._tag(), str(len(prepared))))
        return super()._generate_batch(prepared)

    def _close(self) -> None:
        self.log.append(("close", self._tag()))


class BatchDependent(Logged):
    """Batch-dependent by construction: batched with others, a sentence with "the" loses its last word.

    At batch 1 it echoes like the fake engine; so its batch divergence is known from the data.
    """

    def _generate_batch(self, prepared):  # type: ignore[no-untyped-def]
        outs = super()._generate_batch(prepared)
        if len(prepared) == 1:
            return outs
        the = self.tokenizer.vocab.get("the")
        return [o[:-2] + [EOS_ID] if the in o else o for o in outs]


def factory(kind: type[Logged] = Logged, batch_dependent: str | None = None):  # type: ignore[no-untyped-def]
    Logged.log = []

    def create(cfg: EngineConfig) -> FakeEngine:
        return (BatchDependent if cfg.precision == batch_dependent else kind)(cfg).load()
    return create


CONFIGS = '[[configs]]\nengine = "fake"\nprecision = ["fp32", "bf16", "int8"]\n'


def test_interleaved_order_engines_loaded_once_offline_then_rotated_rounds(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, CONFIGS))
    rows = run_sweep(sweep, tmp_path / "run", progress=False, create=factory(), render=False)
    log = Logged.log
    assert [e for e in log if e[0] == "load"] == [("load", "fp32"), ("load", "bf16"), ("load", "int8")]
    # Offline (warm-up batch of 3, then batches 3 + 3 + 2) and batch 1 (6 x 1), config by config, before any stream
    first_stream = next(i for i, e in enumerate(log) if e[0] == "stream")
    gens = [e for e in log[:first_stream] if e[0] == "generate"]
    per_config = ["3", "3", "3", "2"] + ["1"] * 6
    assert gens == [("generate", p, n) for p in ("fp32", "bf16", "int8") for n in per_config]
    # SingleStream: 1 warm-up round then 4 rounds; round j sends example j to every config, rotated by j
    streams = [e[1:] for e in log if e[0] == "stream"]
    keys = ["fp32", "bf16", "int8"]
    expect = [(k, SENTENCES[0]) for k in rotated(keys, 0)]  # warm-up round (example 0)
    for j in range(4):
        expect += [(k, SENTENCES[j]) for k in rotated(keys, j)]
    assert streams == expect
    assert [e for e in log if e[0] == "close"] == [("close", k) for k in keys]  # closed once, at the end
    assert log.index(("close", "fp32")) > max(i for i, e in enumerate(log) if e[0] == "stream")
    for r in rows:
        ss = r["singlestream"]
        assert r["status"] == "ok" and ss["method"] == "interleaved" and ss["completed"] == 4
        assert ss["warmup_excluded"] == 1 and ss["sessions"] == 1
        assert r["offline"]["warmup_batches"] == 1 and r["offline"]["n"] == 8
    recs = read_records(tmp_path / "run", rows[1]["key"])
    assert [(x.extra["round"], x.warmup) for x in recs] == [(-1, True), (0, False), (1, False), (2, False), (3, False)]
    assert [x.extra["position"] for x in recs] == [1, 1, 0, 2, 1]  # bf16 is keys[1]: rotated positions


def test_no_interleave_keeps_the_old_order(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, CONFIGS, ss="interleave = false\n"))
    rows = run_sweep(sweep, tmp_path / "run", progress=False, create=factory(), render=False)
    kinds = [(e[0], e[1]) for e in Logged.log]
    # per configuration: load, SingleStream (1 warm-up + 4), Offline and batch 1, close; then the next one
    one = lambda p: [("load", p)] + [("stream", p)] * 5 + [("generate", p)] * 10 + [("close", p)]  # noqa: E731
    assert kinds == one("fp32") + one("bf16") + one("int8")
    assert all(r["singlestream"]["method"] == "sequential" and r["singlestream"]["completed"] == 4 for r in rows)


def test_batch_divergence_of_a_batch_dependent_engine(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, CONFIGS))
    rows = run_sweep(sweep, tmp_path / "run", progress=False, create=factory(batch_dependent="int8"), render=False)
    by = {r["config"]["precision"]: r for r in rows}
    # the divergence set is the first 6 sentences; batched (3, 3, 2: never alone), those with "the" change
    with_the = [i for i, s in enumerate(SENTENCES[:6]) if "the" in s.split()]
    assert with_the == [0, 2, 5]
    b = by["int8"]["batch1"]
    assert b["n"] == 6 and b["batch"] == 3 and b["differing"] == 3 and b["batch_divergence"] == 0.5
    assert b["differing_ids"] == [str(i + 1) for i in with_the]
    assert b["at_batch1"]["bleu"] > b["at_batch"]["bleu"]  # batch 1 keeps the words the batch dropped
    for p in ("fp32", "bf16"):
        assert by[p]["batch1"]["batch_divergence"] == 0.0 and by[p]["batch1"]["differing"] == 0
    # the stored outputs carry the token ids the fraction was computed from
    outs, b1 = read_outputs(tmp_path / "run", by["int8"]["key"]), read_outputs(tmp_path / "run", by["int8"]["key"],
                                                                                 "batch1")
    assert outs is not None and b1 is not None
    assert sum(o["token_ids"] != x["token_ids"] for o, x in zip(outs[:6], b1)) == 3
    assert by["int8"]["accuracy"]["exact_match_vs_fp32"] == pytest.approx(1 - sum(
        "the" in s.split() for s in SENTENCES) / 8)
    md = markdown(rows)
    assert "50.0% (3/6 at b3)" in md and "0.0% (0/6 at b3)" in md


def test_a_kill_during_the_rounds_keeps_offline_rows_and_checkpointed_rounds(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, CONFIGS))
    out = tmp_path / "run"
    create = factory()
    Logged.die_at_stream = 3 + 3 * 2 + 1  # warm-up round, two full rounds, then one request into round 2
    try:
        with pytest.raises(Killed):
            run_sweep(sweep, out, progress=False, create=create, render=False)
    finally:
        Logged.die_at_stream = None
    before = read_rows(out)
    assert [r["status"] for r in before] == ["ok"] * 3 and all(r["singlestream"] is None for r in before)
    assert Logged.log.count(("close", "fp32")) == 1  # engines closed on the way out
    done = {r["key"]: [x for x in read_records(out, r["key"]) if not x.warmup] for r in before}
    assert sorted(len(v) for v in done.values()) == [2, 2, 2]  # rounds 0 and 1 checkpointed for every config
    # the report of the interrupted run renders, latency pending
    assert "| pending | pending | pending |" in markdown(before)

    create = factory()
    rows = run_sweep(sweep, out, progress=False, create=create, render=False)
    assert not any(e[0] == "generate" for e in Logged.log)  # no Offline measured again
    assert [e for e in Logged.log if e[0] == "load"] == [("load", "fp32"), ("load", "bf16"), ("load", "int8")]
    streams = [e[1:] for e in Logged.log if e[0] == "stream"]
    keys = ["fp32", "bf16", "int8"]
    expect = [(k, SENTENCES[0]) for k in keys]  # a new warm-up round (a fresh engine), excluded
    for j in (2, 3):
        expect += [(k, SENTENCES[j]) for k in rotated(keys, j)]
    assert streams == expect
    for old, new in zip(before, rows):
        assert {**new, "singlestream": None} == old  # the Offline row, byte for byte
        ss = new["singlestream"]
        assert ss["completed"] == 4 and ss["sessions"] == 2 and ss["warmup_excluded"] == 2
        recs = read_records(out, new["key"])
        assert [x.to_json() for x in recs if not x.warmup][:2] == [x.to_json() for x in done[new["key"]]]
    meta = read_meta(out)
    assert len(meta["sessions"]) == 2 and meta["sessions"][0]["header"].startswith("- command: `run_sweep(")


def test_chat_style_gate_against_the_fp32_outputs(tmp_path):
    class Half(Logged):
        def _echo(self, prepared):  # type: ignore[no-untyped-def]
            out = super()._echo(prepared)
            return out[: max(1, len(out) - 2)] + [EOS_ID]

    def create(cfg: EngineConfig) -> FakeEngine:
        return (Half if cfg.precision == "int8" else Logged)(cfg).load()

    acc = 'gate_reference = "fp32"\ngate_metric = "chrf"\ngate_ratio = 0.99\ngate_length_ratio = [0.5, 1.5]\n'
    sweep = load_sweep(sweep_file(tmp_path, '[[configs]]\nengine = "fake"\nprecision = ["fp32", "bf16", "int8"]\n',
                                  accuracy=acc))
    rows = run_sweep(sweep, tmp_path / "run", progress=False, create=create, render=True)
    by = {r["config"]["precision"]: r for r in rows}
    for p in ("fp32", "bf16"):
        g = by[p]["gate"]
        assert g["metric"] == "chrF" and g["against"] == "fp32" and g["verdict"] == "pass"
        assert g["score"] == pytest.approx(100.0) and by[p]["accuracy"]["exact_match_vs_fp32"] == 1.0
    half = by["int8"]
    assert half["gate"]["score"] == pytest.approx(half["accuracy"]["vs_fp32"]["chrf"])
    assert half["gate"]["score"] < 99 and half["gate"]["verdict"] == "fail"
    assert half["accuracy"]["exact_match_vs_fp32"] == 0.0
    md = (tmp_path / "run" / "report.md").read_text()
    assert "gate: chrF against the fp32 reference's outputs" in md and "ΔchrF vs fp32 [95% CI]" in md
    assert json.loads((tmp_path / "run" / "sweep.json").read_text())["settings"]["gate_reference"] == "fp32"


def test_offline_warmup_batch_is_excluded_from_the_timed_set_and_reported():
    from testbed.datasets import Example
    from testbed.eval.scenarios import offline

    class Clock:
        """A scripted clock: every batch the engine decodes costs exactly 1 s (plus 1 ns per read)."""

        t = 0

        def __call__(self) -> int:
            self.t += 1
            return self.t

    clock = Clock()

    class Timed(FakeEngine):
        def _generate_batch(self, prepared):  # type: ignore[no-untyped-def]
            clock.t += 1_000_000_000
            return super()._generate_batch(prepared)

    eng = Timed(EngineConfig(model="fake-en-de", engine="fake", threads=1), clock=clock).load()
    examples = [Example(str(i), s, None, s) for i, s in enumerate(SENTENCES)]
    outs, off_ns, warm_ns = offline(eng, examples, batch=3, max_new_tokens=32, warmup_batches=1)
    assert round(off_ns / 1e9) == 3 and round(warm_ns / 1e9) == 1  # batches 3 + 3 + 2 timed; the warm-up apart
    assert [o["output"] for o in outs] == SENTENCES  # input order, whatever the batching order
    _, off_ns, warm_ns = offline(eng, examples, batch=3, max_new_tokens=32, warmup_batches=0)
    assert round(off_ns / 1e9) == 3 and warm_ns < 1e9


def test_interleaving_rows_of_one_engine_with_different_threads_is_flagged(tmp_path):
    from testbed.eval.runner import thread_note

    mixed = load_sweep(sweep_file(tmp_path, '[[configs]]\nengine = "fake"\nthreads = [1, 2]\n'))
    assert "rows of fake differ in threads" in (thread_note(mixed) or "")
    import dataclasses

    assert thread_note(dataclasses.replace(mixed, interleave=False)) is None
    assert thread_note(load_sweep(sweep_file(tmp_path, CONFIGS))) is None
    logs: list[str] = []
    run_sweep(mixed, tmp_path / "run", progress=False, create=factory(), log=logs.append)
    assert any(m.startswith("warning: rows of fake differ in threads") for m in logs)
    assert "- **warning**: rows of fake differ in threads" in (tmp_path / "run" / "report.md").read_text()
