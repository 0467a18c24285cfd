"""testbed.signature.write_result: the layout every bench script's result file shares."""

from __future__ import annotations

from testbed.signature import write_result


def test_write_result_writes_title_header_intro_and_body(tmp_path, capsys):
    out = tmp_path / "r.md"
    text = write_result(out, "Title `m`", "python bench/x.py -n 2", "Intro.", "| a |\n|---|", rounds=3, prompts=2)
    assert out.read_text(encoding="utf-8") == text
    assert capsys.readouterr().out.strip() == text.strip()
    lines = text.splitlines()
    assert lines[0] == "# Title `m`" and lines[1] == ""
    assert lines[2] == "- command: `python bench/x.py -n 2`"
    assert {"- rounds: 3", "- prompts: 2"} <= set(lines)
    assert any(ln.startswith("- machine: ") for ln in lines) and any(ln.startswith("- git: ") for ln in lines)
    assert text.endswith("\nIntro.\n\n| a |\n|---|\n")
