"""The sweep runner and the report on the fake engine: rows, skips, failures, gate, resume, rendering."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from testbed.config import EngineConfig
from testbed.engines.fake.engine import FakeEngine
from testbed.engines.registry import create_engine
from testbed.eval.report import markdown, order_rows, render_dir
from testbed.eval.results import read_outputs
from testbed.eval.runner import read_rows, run_sweep
from testbed.eval.sweep import SweepError, load_sweep

SENTENCES = ["open the file menu and click save", "select the range of cells you want to sort",
             "press enter to confirm the new name", "the dialog closes when you click ok",
             "choose format then cells", "drag the border of the column header", "the chart wizard opens",
             "type the formula into the cell and press enter"]


def sweep_file(tmp_path: Path, configs: str, top: str = "") -> Path:
    data = tmp_path / "set.tsv"
    # references = the sources with one word changed: the echoing fake engine scores a high BLEU
    data.write_text("".join(f"doc\t{s}\t{s.replace('the', 'a', 1)}\n" for s in SENTENCES), encoding="utf-8")
    p = tmp_path / "sweep.toml"
    p.write_text(f'{top}name = "t"\nmodel = "fake-en-de"\ndataset = "set.tsv"\nmax_new_tokens = 32\n'
                 "[offline]\nnum_examples = 8\n[singlestream]\nnum_requests = 4\nwarmup = 1\n"
                 '[accuracy]\nbootstrap_samples = 50\n[reference]\nengine = "fake"\n'
                 f"[defaults]\nthreads = 1\nbatch = 3\n{configs}", encoding="utf-8")
    return p


class HalfFake(FakeEngine):
    """Drops the second half of every answer: short outputs, a failing gate."""

    def _echo(self, prepared):  # type: ignore[no-untyped-def]
        out = super()._echo(prepared)
        return out[: max(1, len(out) // 2)]


class Factory:
    def __init__(self, fail: str | None = None, half: str | None = None):
        self.calls: list[str] = []
        self.fail, self.half = fail, half

    def __call__(self, cfg: EngineConfig):  # type: ignore[no-untyped-def]
        self.calls.append(cfg.precision if cfg.pruning == "none" else f"{cfg.precision}/{cfg.pruning}")
        if cfg.precision == self.fail:
            raise RuntimeError("the runtime crashed")
        if cfg.precision == self.half:
            return HalfFake(cfg).load()
        return create_engine(cfg)


CONFIGS = ('[[configs]]\nengine = "fake"\nprecision = ["fp32", "bf16", "int8", "fp16"]\n'
           '[[configs]]\nengine = "fake"\npruning = "unstructured:0.5"\n')


def test_sweep_rows_skips_failures_and_gate(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, CONFIGS))
    out = tmp_path / "run"
    f = Factory(fail="bf16", half="int8")
    rows = run_sweep(sweep, out, progress=False, create=f)
    by = {r["label"]: r for r in rows}
    assert len(rows) == len(sweep.configs) == 5 and f.calls[0] == "fp32"  # the reference runs first
    ref = by["fake/fp32/cpu/t1/b3"]
    assert ref["status"] == "ok" and ref["is_reference"] and ref["gate"]["passed"] is True
    assert ref["accuracy"]["vs_fp32"]["bleu"] == pytest.approx(100.0) and ref["accuracy"]["length_ratio"] == 1.0
    assert ref["offline"]["n"] == 8 and ref["singlestream"]["completed"] == 4
    assert ref["singlestream"]["same_output_as_offline_pct"] == 100.0
    assert ref["signature"]["model_id"].startswith("fake:fake-en-de@") and ref["signature"]["batch"] == 3
    assert ref["signature"]["decoding"] == {"method": "greedy", "max_new_tokens": 32}
    assert by["fake/bf16/cpu/t1/b3"]["status"] == "failed"
    assert "RuntimeError: the runtime crashed" in by["fake/bf16/cpu/t1/b3"]["error"]
    half = by["fake/int8/cpu/t1/b3"]
    assert half["status"] == "ok" and half["gate"]["passed"] is False
    assert half["accuracy"]["length_ratio"] < 0.9 and half["gate"]["margin"] < 0 and half["gate"]["verdict"] == "fail"
    assert half["accuracy"]["gate_diff"]["diff"] < 0
    assert by["fake/fp16/cpu/t1/b3"]["gate"]["passed"] is True
    pruned = by["fake/fp32/unstructured:0.5/cpu/t1/b3"]
    assert pruned["status"] == "skipped" and "does not run pruned models" in pruned["error"]
    # files
    assert [r["key"] for r in read_rows(out)] == [r["key"] for r in rows]
    outs = (out / "outputs" / f"{ref['key']}.jsonl").read_text().splitlines()
    assert len(outs) == 8 and json.loads(outs[0])["output"] == SENTENCES[0]
    assert len((out / "records" / f"{ref['key']}.jsonl").read_text().splitlines()) == 5
    report = (out / "report.md").read_text()
    # ranked: the two passing rows first (their order follows their measured latency), then the failure
    ranked = {int(m.group(2)): m.group(3) for m in re.finditer(r"^(\| (\d+) \| `([^`]+)` \|)", report, re.M)}
    assert {ranked[1], ranked[2]} == {"fake/fp32/cpu/t1/b3", "fake/fp16/cpu/t1/b3"}, ranked
    assert ranked[3] == "fake/int8/cpu/t1/b3", ranked
    assert "* failed: `fake/bf16/cpu/t1/b3`: load: RuntimeError: the runtime crashed" in report
    assert "* gate failed: `fake/int8/cpu/t1/b3`: BLEU" in report and "length ratio" in report
    assert (out / "pareto.png").stat().st_size > 1000
    table = list(csv.DictReader((out / "results.csv").open()))
    assert len(table) == 5 and table[-1]["status"] == "skipped"


def test_resume_skips_done_and_reruns_failed(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, CONFIGS))
    out = tmp_path / "run"
    run_sweep(sweep, out, progress=False, create=Factory(fail="bf16"), render=False)
    first = {r["key"]: r for r in read_rows(out)}
    again = Factory()
    logs: list[str] = []
    rows = run_sweep(sweep, out, progress=False, create=again, log=logs.append, render=False)
    # only the failed and the skipped ones are tried again (an engine may have been installed since)
    assert again.calls == ["bf16", "fp32/unstructured:0.5"]
    assert any("resuming: 3 of 5" in m for m in logs)
    for r in rows:
        if first[r["key"]]["status"] == "ok":
            assert r == first[r["key"]]  # kept byte for byte
    assert {r["label"]: r["status"] for r in rows}["fake/bf16/cpu/t1/b3"] == "ok"
    assert len(rows) == 5


def test_failed_reference_makes_the_gate_say_so(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, '[[configs]]\nengine = "fake"\nprecision = ["fp32", "int8"]\n'))
    out = tmp_path / "run"
    rows = run_sweep(sweep, out, progress=False, create=Factory(fail="fp32"), render=True)
    int8 = next(r for r in rows if r["label"].startswith("fake/int8"))
    assert int8["status"] == "ok" and int8["gate"]["passed"] is None
    assert "fp32 reference failed: load: RuntimeError" in int8["gate"]["reasons"][0]
    assert "gate undecided: `fake/int8/cpu/t1/b3`: fp32 reference failed" in (out / "report.md").read_text()
    # once the reference succeeds, the earlier row is gated from its stored outputs, not re-measured
    again = Factory()
    rows = run_sweep(sweep, out, progress=False, create=again, render=False)
    assert again.calls == ["fp32"]
    int8 = next(r for r in rows if r["label"].startswith("fake/int8"))
    assert int8["gate"]["passed"] is True and int8["gate"]["score_fp32"] is not None


def test_a_directory_of_another_sweep_is_refused(tmp_path):
    out = tmp_path / "run"
    run_sweep(load_sweep(sweep_file(tmp_path, '[[configs]]\nengine = "fake"\n')), out, progress=False, render=False)
    other = load_sweep(sweep_file(tmp_path, '[[configs]]\nengine = "fake"\n', top="seed = 3\n"))
    with pytest.raises(SweepError, match="holds results of a different sweep"):
        run_sweep(other, out, progress=False, render=False)
    run_sweep(other, out, resume=False, progress=False, render=False)
    assert (out / "results.jsonl.prev").is_file() and len(read_rows(out)) == 1


def _row(label: str, passed: bool | None, p90: float, bleu: float, status: str = "ok", ref: bool = False) -> dict:
    if status != "ok":
        return {"key": label, "label": label, "status": status, "error": f"{label} broke", "is_reference": False}
    return {
        "key": label, "label": label, "status": "ok", "is_reference": ref, "error": None, "load_ms": 1500.0,
        "config": {"engine": label.split("/")[0], "precision": label.split("/")[1], "batch": 8},
        "singlestream": {"median_e2el_ms": p90 / 2, "p90_e2el_ms": p90, "p90_ttft_ms": 9.0, "median_tpot_ms": 4.0},
        "offline": {"sentences_per_s": 20.0, "tokens_per_s": 400.0, "n": 100},
        "accuracy": {"vs_references": {"bleu": bleu, "chrf": 55.0, "bleu_signature": "nrefs:1|tok:13a",
                                       "chrf_signature": "nrefs:1|nc:6"},
                     "vs_fp32": {"bleu": 80.0, "chrf": 90.0}, "length_ratio": 1.01,
                     "gate_diff": {"diff": bleu - 27.0, "ci95": [bleu - 27.5, bleu - 26.5]}},
        "gate": {"passed": passed, "verdict": {True: "pass", False: "fail", None: None}[passed],
                 "margin": bleu - 26.73, "pct_of_fp32": 100 * bleu / 27.0, "metric": "BLEU",
                 "threshold": 26.73, "score": bleu, "score_fp32": 27.0,
                 "reasons": [] if passed else [f"BLEU {bleu} < 0.99 x fp32 27.00 = 26.73"]},
        "signature": {"model_id": "marian-en-de@abc", "git_sha": "f00", "machine": {"cpu": "cpu", "cores": 2}},
    }


SYNTHETIC = [
    _row("torch/fp32", True, 200.0, 27.0, ref=True), _row("torch/int8", False, 150.0, 26.0),
    _row("ort/int8", True, 60.0, 26.9), _row("ct2/int8", True, 40.0, 26.8), _row("ort/fp32", True, 90.0, 27.0),
    _row("trt/fp16", None, 0, 0, status="skipped"), _row("torch/bf16", None, 0, 0, status="failed"),
]


def test_report_rendering_from_a_synthetic_results_file(tmp_path):
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SYNTHETIC))
    paths = render_dir(tmp_path)
    md = paths["report"].read_text()  # type: ignore[union-attr]
    lines = [ln for ln in md.splitlines() if ln.startswith("| ") and "`" in ln]
    # passing first, fastest p90 first; the gate failure after them
    assert [ln.split("`")[1] for ln in lines] == ["ct2/int8", "ort/int8", "ort/fp32", "torch/fp32", "torch/int8"]
    assert lines[0].startswith("| 1 | `ct2/int8` | pass (+0.07) | 26.80 | -0.20 [-0.70, +0.30] | 99.3 | 55.00")
    assert "| reference |" in lines[3] and "**FAIL** (-0.73)" in lines[4]
    assert "Best passing configuration: `ct2/int8` (p90 E2E 40.0 ms, BLEU 26.80)." in md
    assert "* gate failed: `torch/int8`: BLEU 26.0 < 0.99 x fp32 27.00 = 26.73" in md
    assert "* failed: `torch/bf16`: torch/bf16 broke" in md and "* skipped: `trt/fp16`: trt/fp16 broke" in md
    assert md.index("* failed:") < md.index("* skipped:")
    assert "sacreBLEU: `nrefs:1|tok:13a`" in md
    rows = list(csv.DictReader(paths["csv"].open()))  # type: ignore[union-attr]
    assert [r["label"] for r in rows][:2] == ["ct2/int8", "ort/int8"] and rows[-1]["status"] == "skipped"
    assert rows[0]["p90_e2e_ms"] == "40.0" and rows[0]["verdict"] == "pass"
    assert paths["plot"] is not None and paths["plot"].stat().st_size > 1000


def test_report_cli_and_empty_directory(tmp_path, capsys):
    from testbed.cli import main

    assert main(["report", str(tmp_path)]) == 2
    assert "no results.jsonl here" in capsys.readouterr().err
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SYNTHETIC))
    assert main(["report", str(tmp_path)]) == 0
    assert "Best passing configuration: `ct2/int8`" in capsys.readouterr().out
    assert (tmp_path / "pareto.png").is_file() and (tmp_path / "results.csv").is_file()


def test_no_measured_row_renders(tmp_path):
    measured, rest = order_rows([SYNTHETIC[-1]])
    assert measured == [] and len(rest) == 1
    assert "_No configuration was measured._" in markdown([SYNTHETIC[-1]])


def test_engine_whose_runtime_is_missing_is_skipped_with_the_extra(tmp_path, monkeypatch):
    from testbed.engines import registry

    monkeypatch.setitem(registry.ENGINES, "ghost", registry.EngineEntry(
        "testbed.engines.ghost:Ghost", "ghostextra", "no_such_runtime_module", "a runtime that is not installed"))
    sweep = load_sweep(sweep_file(tmp_path, '[[configs]]\nengine = ["fake", "ghost"]\nprecision = "int8"\n'))
    rows = run_sweep(sweep, tmp_path / "run", progress=False, render=False)
    ghost = next(r for r in rows if r["config"]["engine"] == "ghost")
    assert ghost["status"] == "skipped" and "pip install 'testbed[ghostextra]'" in ghost["error"]
    assert [r["status"] for r in rows] == ["ok", "ok", "skipped"]


def test_report_says_when_the_best_passing_row_is_no_faster_than_the_reference(tmp_path):
    rows = [_row("torch/fp32", True, 200.0, 27.0, ref=True), _row("torch/bf16", True, 250.0, 27.0),
            _row("torch/int8", False, 100.0, 20.0)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = render_dir(tmp_path)["report"].read_text()  # type: ignore[union-attr]
    assert "Best passing configuration: `torch/bf16`" in md
    assert "It is not faster than the fp32 reference `torch/fp32` (p90 E2E 200.0 ms)" in md
    # and not said when the best passing row is faster
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SYNTHETIC))
    assert "not faster" not in render_dir(tmp_path)["report"].read_text()  # type: ignore[union-attr]


def test_report_shows_verdicts_with_intervals_and_the_session_header(tmp_path):
    noisy = _row("ort/int8", False, 30.0, 26.66)
    noisy["gate"].update(verdict="within noise", reasons=["the 95% interval of BLEU - fp32, [-0.68, -0.03], "
                                                          "straddles the threshold -0.27"])
    noisy["accuracy"]["gate_diff"] = {"diff": -0.34, "ci95": [-0.68, -0.03]}
    noisy["batch1"] = {"n": 64, "batch": 32, "batch_divergence": 0.125, "differing": 8,
                       "at_batch1": {"bleu": 27.5}, "at_batch": {"bleu": 27.25}}
    rows = [_row("torch/fp32", True, 200.0, 27.0, ref=True), noisy, _row("ct2/int8", True, 40.0, 26.8),
            _row("torch/int8", False, 150.0, 26.0)]
    meta = {"name": "t", "settings": {"interleave": True, "warmup": 5, "singlestream_requests": 64,
                                      "gate_metric": "bleu", "gate_reference": "references", "gate_ratio": 0.99},
            "sessions": [{"header": "- command: `testbed eval --sweep default`\n- machine: cpu (avx2)\n",
                          "load1_end": 2.5, "started_at": "2026-11-30T11:00:05+00:00",
                          "finished_at": "2026-11-30T11:09:12+00:00"},
                         {"started_at": "later", "command": "testbed eval", "load1_start": 1.0, "load1_end": 1.5}]}
    md = markdown(rows, meta)
    assert md.startswith("- command: `testbed eval --sweep default`\n- machine: cpu (avx2)\n- resumed later:")
    assert "load average (1 min) at the end of each session: 2.50, 1.50" in md
    assert "- wall time of each session (engine loads and artefact builds included): 547 s, n/a (unfinished)" in md
    lines = [ln for ln in md.splitlines() if ln.startswith("| ") and "`" in ln]
    assert [ln.split("`")[1] for ln in lines] == ["ct2/int8", "torch/fp32", "ort/int8", "torch/int8"]
    assert "| **within noise** (-0.07) | 26.66 | -0.34 [-0.68, -0.03] |" in lines[2]
    assert "| 12.5% (8/64 at b32) | 27.50 / 27.25 |" in lines[2]
    assert "**FAIL** (-0.73)" in lines[3]
    assert "**interleaved**: every engine loaded once" in md
    assert "Best passing configuration: `ct2/int8`" in md
    # ort/int8 (30 ms) is faster than the best passing row (40 ms) but its interval straddles the threshold
    assert "Faster, but within noise (this test set cannot tell whether they pass): `ort/int8` (p90 E2E 30.0 ms)." in md
    assert "* within noise: `ort/int8`: the 95% interval of BLEU - fp32, [-0.68, -0.03], straddles" in md


def test_batching_axis_runs_the_offline_set_through_the_scheduler(tmp_path):
    """batching = static / continuous: the same outputs as the engine's own batches, and the mode in
    the row's config, label and signature (a row of the engine's batches keeps its earlier key)."""
    sweep = load_sweep(sweep_file(tmp_path, '[[configs]]\nengine = "fake"\nprecision = "bf16"\n'
                                            'batching = ["engine", "static", "continuous"]\n'))
    rows = run_sweep(sweep, tmp_path / "out", progress=False, render=False)
    served = {r["config"].get("batching", "engine"): r for r in rows if r["config"]["precision"] == "bf16"}
    assert set(served) == {"engine", "static", "continuous"}
    assert all(r["status"] == "ok" for r in served.values())
    outs = {m: [o["output"] for o in read_outputs(tmp_path / "out", r["key"]) or []] for m, r in served.items()}
    assert len(outs["engine"]) == 8
    assert outs["static"] == outs["engine"] == outs["continuous"]
    assert served["continuous"]["signature"]["batching"] == "continuous"
    assert "batching" not in served["engine"]["signature"] and "batching" not in served["engine"]["config"]
    assert served["static"]["offline"]["batching"] == "static"


def test_continuous_batching_is_refused_at_validation_for_an_engine_that_cannot_join(tmp_path):
    with pytest.raises(SweepError, match=r"batching = 'continuous'.*static"):
        load_sweep(sweep_file(tmp_path, '[[configs]]\nengine = "ctranslate2"\nprecision = "int8"\n'
                                        'batching = "continuous"\n'))
    with pytest.raises(SweepError, match=r"batching = 'dynamic'.*engine, static, continuous"):
        load_sweep(sweep_file(tmp_path, '[[configs]]\nengine = "fake"\nbatching = "dynamic"\n'))
