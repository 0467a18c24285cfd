"""The CLI on the fake engine: output shape, stdin handling, clear errors (exit 2)."""

from __future__ import annotations

import io
import json

import pytest

from testbed.cli import main


def run(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_has_quick_start(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "quick start" in capsys.readouterr().out


def test_translate_prints_text_and_timings(capsys):
    code, out, _ = run(["translate", "--engine", "fake", "hello world"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "hello world"
    assert "ttft" in lines[1] and "tpot" in lines[1] and "e2e" in lines[1] and "encoder" in lines[1]


def test_translate_reads_stdin_lines(capsys, monkeypatch):
    code, out, _ = run(["translate", "--engine", "fake", "--json"], capsys, "a b\n\nc d e\n", monkeypatch)
    assert code == 0
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["translation"] for r in rows] == ["a b", "c d e"]
    assert all(r["ttft_ms"] > 0 and r["e2e_ms"] >= r["ttft_ms"] for r in rows)
    assert rows[1]["output_tokens"] == 4  # three words + EOS, counted from token ids


def test_chat_reads_turns_from_stdin_and_exits_at_eof(capsys, monkeypatch):
    code, out, _ = run(["chat", "--engine", "fake", "--model", "fake-chat"], capsys, "hi there\nbye\n", monkeypatch)
    assert code == 0
    answers = [x for x in out.splitlines() if x.startswith("bot> ")]
    assert answers == ["bot> hi there", "bot> bye"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["translate", "--engine", "nope", "x"], "allowed: torch"),
        (["translate", "--precision", "fp4", "x"], "precision='fp4'"),
        (["translate", "--device", "tpu", "x"], "device='tpu'"),
        (["translate", "--engine", "fake", "  "], "empty input"),
        (["translate", "--model", "no/such-model-anywhere", "x"], "marian-en-de"),
        (["translate", "--model", "/definitely/not/here", "x"], "local directory"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(argv, needle, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(argv, capsys)
    assert code == 2
    assert needle in err


def test_chat_model_refused_by_translate(capsys):
    code, _, err = run(["translate", "--engine", "fake", "--model", "fake-chat", "x"], capsys)
    assert code == 2 and "testbed chat" in err


def test_engines_lists_torch(capsys):
    code, out, _ = run(["engines"], capsys)
    assert code == 0 and "| torch | yes |" in out


def test_bench_singlestream_writes_records_and_summary(capsys, tmp_path):
    code, out, _ = run(["bench", "--engine", "fake", "--num-requests", "7", "--warmup", "2", "--no-progress",
                        "--out", str(tmp_path)], capsys)
    assert code == 0
    assert "| TTFT (ms) | 7 |" in out and "BLEU" in out and "nrefs:1" in out
    records = [json.loads(x) for x in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len(records) == 9 and sum(r["warmup"] for r in records) == 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["summary"]["completed"] == 7 and summary["summary"]["failed"] == 0
    assert summary["accuracy"]["n"] == 7
    assert summary["signature"]["engine"] == "fake" and "versions" in summary["signature"]
