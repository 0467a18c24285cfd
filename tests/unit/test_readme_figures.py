"""Numbers have one home: every figure the README quotes is copied from a committed result file.

The README quotes a measured figure as a Markdown link to its file,
``[0.14x](bench/results/engines_marian.md)``; this test fails when a number in such a link's text
is absent from the file it names (re-measuring means re-quoting), when a quoted file is missing,
or when a quoted result file lacks its header (command, CPU model and ISA, rounds, and the git
SHA of a committed tree: ``testbed.signature.result_header``).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[([^\]]*\d[^\]]*)\]\((bench/results/[^)#\s]+)(?:#[^)]*)?\)")
# a number not glued to a word before it (p50, fp32 are labels), units after it allowed (0.14x, 24.6ms)
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*(?![\d]|[.,]\d)")


def numbers(text: str) -> list[str]:
    """The numbers written in ``text`` as they are written (``1,200``, ``0.14``, ``-0.34``), signs dropped."""
    return [m.group(0).lstrip("+-") for m in NUMBER.finditer(text)]


def quoted(readme: str) -> list[tuple[int, str, str]]:
    """``(line, link text, file)`` for every figure the README links to a result file."""
    out = []
    for n, line in enumerate(readme.splitlines(), 1):
        for m in LINK.finditer(line):
            out.append((n, m.group(1), m.group(2)))
    return out


def missing(figure: str, source: str) -> list[str]:
    have = set(numbers(source))
    return [x for x in numbers(figure) if x not in have]


def test_the_checker_finds_numbers_as_written():
    assert numbers("p50 24.6 ms (0.14x, 103% of fp32; 1,200 sentences; -0.34 [-0.68, -0.03])") == [
        "24.6", "0.14", "103", "1,200", "0.34", "0.68", "0.03"]
    assert missing("0.14x", "| 0.14 |") == [] and missing("0.15x", "| 0.14 | 10.15 |") == ["0.15"]
    assert missing("103%", "103.1") == ["103"]  # a rounded quote is not the file's figure
    readme = "x [24.6 ms](bench/results/a.md) and [code](testbed/x.py) and [p90](bench/results/b.md#t)"
    assert quoted(readme) == [(1, "24.6 ms", "bench/results/a.md"), (1, "p90", "bench/results/b.md")]


@cache
def _files() -> dict[str, list[tuple[int, str]]]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    by_file: dict[str, list[tuple[int, str]]] = {}
    for n, text, path in quoted(readme):
        by_file.setdefault(path, []).append((n, text))
    return by_file


def test_the_readme_quotes_figures_from_result_files():
    assert _files(), "the README quotes no figure from bench/results/ (links like [0.14x](bench/results/x.md))"


@pytest.mark.parametrize("path", sorted(_files()))
def test_every_quoted_figure_is_in_its_file(path):
    f = ROOT / path
    assert f.is_file(), f"README quotes {path}, which does not exist"
    if f.suffix not in (".md", ".txt", ".json", ".csv"):
        return  # an image: the link names it, there is no figure to compare
    source = f.read_text(encoding="utf-8")
    bad = [(n, text, missing(text, source)) for n, text in _files()[path] if missing(text, source)]
    assert not bad, "README figures absent from " + path + ": " + "; ".join(
        f"line {n}: [{text}] lacks {', '.join(m)}" for n, text, m in bad)


@pytest.mark.parametrize("path", sorted(p for p in _files() if p.endswith(".md")))
def test_every_quoted_result_file_has_its_header(path):
    head = (ROOT / path).read_text(encoding="utf-8")[:4000]
    bullets = [line for line in head.splitlines() if line.startswith("- ")]
    for field in ("- command:", "- machine:"):
        assert any(b.startswith(field) for b in bullets), f"{path}: its header lacks '{field}' (result_header)"
    assert any("rounds" in b for b in bullets), f"{path}: its header does not say how many rounds were run"
    sha = re.search(r"- git: ([0-9a-f]{40})(\S*)", head)
    assert sha, f"{path}: its header names no git SHA"
    assert sha.group(2) == "", f"{path}: measured on an uncommitted tree ({sha.group(0)}); commit, then measure"
