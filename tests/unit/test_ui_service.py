"""The demo's Gradio-free parts: engine cache and locks, the streaming runner, the history and its
percentiles, the Results tab's run finder and sweep runner, the load-test scenario."""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from testbed.config import EngineConfig
from testbed.engines.base import ENCODER_DONE, GenerationRequest, Prepared
from testbed.engines.fake.engine import FakeEngine
from testbed.engines.registry import ENGINES, EngineEntry
from testbed.errors import ConfigError
from testbed.metrics import summary as S
from testbed.ui import loadtest, results
from testbed.ui import service as svc


class SlowFake(FakeEngine):
    """Fake engine that waits on an event before each token (to observe streaming), or fails."""

    gate: threading.Semaphore | None = None

    def _decode(self, prepared: Prepared) -> Generator[object, None, None]:
        words = {self.tokenizer.words[i] for i in prepared.input_ids}
        for i, tok in enumerate(super()._decode(prepared)):
            if "BOOM" in words and i == 2:
                raise RuntimeError("kaput")
            if self.gate is not None and tok is not ENCODER_DONE:
                assert self.gate.acquire(timeout=5), "test gate never opened"
            yield tok


def _cache(calls: list[EngineConfig] | None = None, clock: Any = None) -> svc.EngineCache:
    def factory(cfg: EngineConfig) -> FakeEngine:
        if calls is not None:
            calls.append(cfg)
        return SlowFake(cfg, clock=clock) if clock else SlowFake(cfg)
    return svc.EngineCache(factory)


def _cfg(**kw: Any) -> EngineConfig:
    return svc.make_config("translate", kw.pop("engine", "fake"), kw.pop("precision", "fp32"), **kw)


def test_cache_loads_once_per_configuration_with_one_lock_each() -> None:
    calls: list[EngineConfig] = []
    cache = _cache(calls)
    a1, a2 = cache.get(_cfg()), cache.get(_cfg())
    b = cache.get(_cfg(precision="int8"))
    assert len(calls) == 2 and a1.engine is a2.engine and a1.lock is a2.lock
    assert not a1.cached and a2.cached and b.lock is not a1.lock
    assert a1.warmup_ms is not None and a1.warmup_ms >= 0  # warm-up ran right after loading
    cache.close()
    assert cache.loaded() == []


def test_stream_answer_streams_and_ends_with_the_engine_record(clock: Any) -> None:
    ld = _cache(clock=clock).get(_cfg())
    snaps = list(svc.stream_answer(ld, GenerationRequest(text="eins zwei drei vier")))
    final = snaps[-1]
    assert final.done and final.error is None and final.text == "eins zwei drei vier"
    assert [s.n_tokens for s in snaps] == sorted(s.n_tokens for s in snaps)  # tokens only grow
    m = svc.answer_metrics(final.record)
    rec = final.record
    assert rec is not None and m["tokens"] == 5  # four words + EOS, counted from token ids
    assert m["ttft_ms"] == S.ttft_ms(rec) and m["e2e_ms"] == S.e2e_ms(rec) and m["tpot_ms"] == S.tpot_ms(rec)
    assert m["tokens_per_s"] == pytest.approx(5 / m["e2e_ms"] * 1000)  # type: ignore[operator]
    # the lock is free again
    assert ld.lock.acquire(timeout=1)
    ld.lock.release()


def test_stream_answer_yields_partial_snapshots_while_decoding() -> None:
    ld = _cache().get(_cfg())
    gate = threading.Semaphore(0)
    ld.engine.gate = gate  # type: ignore[attr-defined]
    it = svc.stream_answer(ld, GenerationRequest(text="a b c"))
    seen = [next(it).n_tokens]  # started, no token yet
    for k in (1, 2, 3):
        gate.release()  # exactly one more token may be decoded
        snap = next(it)
        while snap.n_tokens < k:
            snap = next(it)
        assert snap.n_tokens == k and not snap.done and snap.text == " ".join("abc"[:k])
        assert snap.record is not None and S.ttft_ms(snap.record) is not None
        seen.append(k)
    gate.release()
    rest = list(it)
    assert seen == [0, 1, 2, 3] and rest[-1].done and rest[-1].n_tokens == 4


def test_engine_error_is_a_snapshot_and_the_engine_stays_usable() -> None:
    ld = _cache().get(_cfg())
    final = list(svc.stream_answer(ld, GenerationRequest(text="this will BOOM now")))[-1]
    assert final.done and final.error is not None and "kaput" in final.error
    assert final.record is not None and not final.record.ok
    again = list(svc.stream_answer(ld, GenerationRequest(text="fine words")))[-1]
    assert again.error is None and again.text == "fine words"


def test_empty_and_overlong_inputs() -> None:
    ld = _cache().get(_cfg())
    empty = list(svc.stream_answer(ld, GenerationRequest(text="   ")))[-1]
    assert empty.error and "empty input" in empty.error and empty.record is None
    long = list(svc.stream_answer(ld, GenerationRequest(text=" ".join(f"w{i}" for i in range(300)))))[-1]
    assert long.warnings == ("input truncated to 256 of its 301 tokens",)


def test_closing_the_stream_stops_decoding_and_frees_the_lock() -> None:
    ld = _cache().get(_cfg())
    gate = threading.Semaphore(0)
    ld.engine.gate = gate  # type: ignore[attr-defined]
    streams: list[Any] = []
    real_stream = ld.engine.stream
    ld.engine.stream = lambda req: streams.append(real_stream(req)) or streams[-1]  # type: ignore[method-assign]
    it = svc.stream_answer(ld, GenerationRequest(text=" ".join(["w"] * 50)))
    gate.release()
    while next(it).n_tokens < 1:
        pass
    it.close()  # the page went away
    for _ in range(3):
        gate.release()  # the producer sees the cancel at its next token and stops
    assert ld.lock.acquire(timeout=5)
    ld.lock.release()
    # stopped by the cancel, not by the test gate timing out (that would end as an error after 5 s)
    (stream,) = streams
    assert stream.finish_reason == "cancelled", (stream.finish_reason, stream.error)
    assert 1 <= len(stream.token_ids) <= 4  # the first token and at most the 3 the gate let through


def test_unavailable_engine_is_listed_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ENGINES, "missing", EngineEntry("nope:X", "tensorrt", "testbed_no_such_module", "test"))
    opts = {o.name: o for o in svc.engine_options()}
    assert opts["torch"].available and opts["fake"].available
    miss = opts["missing"]
    assert not miss.available and "pip install 'testbed[tensorrt]'" in miss.label
    assert svc.engine_of_label(miss.label) == "missing"
    assert "not available" in (svc.unavailable_reason(miss.label) or "")
    assert svc.unavailable_reason("torch") is None
    assert svc.precision_choices("missing") == [] and svc.pruning_choices("missing") == ["none"]


def test_pickers_follow_engine_capabilities() -> None:
    assert "int8" in svc.precision_choices("torch", "cpu") and "fp16" not in svc.precision_choices("torch", "cpu")
    assert svc.thread_choices()[0] == "default"
    cfg = svc.make_config("chat", "torch", "int8", "none", "1")
    assert cfg.model == "smollm2-135m-instruct" and cfg.threads == 1 and cfg.max_new_tokens == 256


def test_history_rows_and_percentiles() -> None:
    def entry(ttft: float, served: float | None, err: str | None = None) -> svc.HistoryEntry:
        m = {"ttft_ms": ttft, "tpot_ms": 1.0, "e2e_ms": ttft + 10, "tokens": 3, "tokens_per_s": 100.0, "n_in": 4}
        return svc.HistoryEntry("translate", "A", "fake/fp32/cpu", m, err, served)

    hist = [entry(10, 30), entry(20, 50), entry(30, None), entry(99, 99, err="boom")]
    rows = svc.history_rows(hist)
    assert len(rows) == 4 and rows[2][7] == "n/a" and rows[3][-1] == "boom"
    summ = {r[2]: r for r in svc.history_summary(hist)}
    assert summ["engine TTFT ms"][1] == 3 and summ["engine TTFT ms"][3] == "20.00"  # failed row excluded
    assert summ["served TTFT ms"][1] == 2 and summ["Gradio overhead ms"][3] == "25.00"  # p50 of 20, 30
    assert summ["engine TTFT ms"][4] == "28.00"  # numpy linear p90 of 10, 20, 30


def test_latest_run_picks_the_newest_report(tmp_path: Path) -> None:
    assert results.latest_run(tmp_path / "absent") is None
    assert results.latest_run(tmp_path) is None
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "report.md").write_text("# old")
    (new / "report.md").write_text("# new")
    (new / "pareto.png").write_bytes(b"png")
    import os

    os.utime(old / "report.md", (1, 1))
    run = results.latest_run(tmp_path)
    assert run is not None and run.path == new and run.report == "# new" and run.pareto == new / "pareto.png"


def test_run_sweep_bad_inputs_and_missing_eval_subcommand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert list(results.run_sweep("", tmp_path))[-1][1].startswith("no sweep file given")
    assert "not found" in list(results.run_sweep(str(tmp_path / "nope.toml"), tmp_path))[-1][1]
    sweep = tmp_path / "s.toml"
    sweep.write_text("")
    # a CLI without `eval` (argparse: invalid choice) is reported as such
    monkeypatch.setattr(results, "sweep_command", lambda s, out: [
        "python3", "-c", "import argparse, sys; p = argparse.ArgumentParser(prog='testbed'); "
        "s = p.add_subparsers(); s.add_parser('bench'); p.parse_args(sys.argv[1:])", "eval", "--sweep", s])
    frac, text, done = list(results.run_sweep(str(sweep), tmp_path))[-1]
    assert done and results.NO_EVAL in text
    # progress is read from the child's tqdm-style output
    monkeypatch.setattr(results, "sweep_command", lambda s, out: [
        "python3", "-c", "import sys\nfor i in range(1, 5): sys.stderr.write(f'\\r{i}/4 configs'); sys.stderr.flush()",
        "x", "y", "z"])
    out = list(results.run_sweep(str(sweep), tmp_path))
    assert out[-1][0] == 1.0 and out[-1][2] and "4/4 configs" in out[-1][1]


def test_sweep_command_is_the_eval_subcommand(tmp_path: Path) -> None:
    cmd = results.sweep_command("x.toml", tmp_path / "o")
    assert cmd[3:] == ["eval", "--sweep", "x.toml", "--out", str(tmp_path / "o")]


def test_loadtest_runs_the_scenario_and_draws_the_histogram() -> None:
    ld = _cache().get(_cfg())
    seen: list[tuple[int, int]] = []
    md, fig, wf = loadtest.run_loadtest(ld, "translate", "singlestream (in-process)", 6, 2,
                                        progress=lambda d, t: seen.append((d, t)))
    assert "6 / 0" in md and "2 warm-up excluded" in md and "TTFT (ms)" in md
    assert seen[-1] == (8, 8)
    assert fig is not None and len(fig.axes) == 2
    # the waterfall of the median request: one panel, its bars are the engine's phases
    assert wf is not None and len(wf.axes) == 1
    labels = [t.get_text() for t in wf.axes[0].get_yticklabels()]
    assert labels[0].startswith("tokenisation") and any(x.startswith("later tokens") for x in labels)
    bad, none, none2 = loadtest.run_loadtest(ld, "translate", "nope", 5, 0)
    assert "unknown scenario" in bad and none is None and none2 is None


def test_loadtest_batched_scenario_keeps_scheduler_timing_and_refuses_continuous() -> None:
    import dataclasses

    from testbed.serve.batcher import BatchConfig

    ld = _cache().get(_cfg())
    md, _, wf = loadtest.run_loadtest(ld, "translate", loadtest.BATCHED, 6, 1,
                                      batch=BatchConfig(batching="static", max_batch_size=2))
    assert "6 / 0" in md and "static batch<=2" in md
    labels = [t.get_text() for t in wf.axes[0].get_yticklabels()]
    assert any(x.startswith("intake + tokenisation [server]") for x in labels), labels
    # an engine whose capabilities say rows cannot join: continuous is refused, never downgraded
    caps = dataclasses.replace(ld.engine.capabilities, batching="static", join_refusal="cannot join here")
    object.__setattr__(ld.engine, "capabilities", caps)
    with pytest.raises(ConfigError, match="cannot join here"):
        loadtest.run_loadtest(ld, "translate", loadtest.BATCHED, 6, 1, batch=BatchConfig(batching="continuous"))


def test_cli_registers_ui() -> None:
    from testbed.cli import build_parser

    args = build_parser().parse_args(["ui", "--port", "7999"])
    assert args.port == 7999 and args.func.__name__ == "cmd_ui"


def test_cli_ui_takes_server_urls_and_refuses_bad_ones(capsys: pytest.CaptureFixture[str]) -> None:
    from testbed.cli import build_parser, main

    args = build_parser().parse_args(["ui", "--url", "http://127.0.0.1:8000", "--url", "http://127.0.0.1:8001"])
    assert args.url == ["http://127.0.0.1:8000", "http://127.0.0.1:8001"]
    assert main(["ui", "--url", "127.0.0.1:8000"]) == 2  # no scheme: refused before anything starts
    assert "--url '127.0.0.1:8000' is not accepted" in capsys.readouterr().err
    assert main(["ui", "--url", "http://a", "--url", "http://b", "--url", "http://c"]) == 2
    assert "given 3 times" in capsys.readouterr().err


def test_chat_tab_lists_the_dialogue_model_and_a_slot_runs_the_picked_model() -> None:
    from testbed.ui.pickers import make_config

    assert svc.task_models("chat") == ["smollm2-135m-instruct", "chitchat-bbs-10m"]
    assert svc.task_models("translate") == ["marian-en-de"]
    picks = ("torch", "fp32", "none", "default", "cpu")
    assert make_config("chat", *picks, "chitchat-bbs-10m").model == "chitchat-bbs-10m"
    assert make_config("chat", *picks, None).model == "smollm2-135m-instruct"  # a tab without a model list
    assert make_config("translate", *picks).model == "marian-en-de"
