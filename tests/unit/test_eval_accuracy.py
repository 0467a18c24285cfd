"""The runner's accuracy step: scores, gate and verdict computed from unrounded scores."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.eval.sweep import parse_sweep

REFS = ["the cat sat on the mat", "a quick brown fox jumps over the dog", "open the file menu and click save",
        "select the range of cells you want", "press enter to confirm the name",
        "the dialog closes when you click ok", "drag the border of the column header", "type the formula into the cell"]
# found by a search: BLEU(config) = 44.0175 < 0.99 x BLEU(fp32) = 0.99 x 44.4632 = 44.0185 (fails), while the
# scores rounded to 2 decimals pass: 44.02 >= 0.99 x 44.46 = 44.0154
FP32 = ["the cat on on mat", "a quick fox jumps file the dog", "open the file menu and click save",
        "the range cells you want", "press enter confirm the name", "dialog closes when you click ok",
        "drag border of the header", "type the a the cell"]
CONFIG = ["the cat on on", *FP32[1:]]
CONFIG[1] = "a quick fox file the dog"


def _sweep(tmp_path: Path):  # type: ignore[no-untyped-def]
    data = tmp_path / "set.tsv"
    data.write_text("".join(f"src {i}\t{r}\n" for i, r in enumerate(REFS)), encoding="utf-8")
    return parse_sweep({"model": "fake-en-de", "dataset": str(data), "reference": {"engine": "fake"},
                        "accuracy": {"bootstrap_samples": 0}, "configs": [{"engine": "fake"}]})


def _outs(texts: list[str]) -> list[dict]:
    return [{"id": str(i), "output": t, "n_out": len(t.split()) + 1} for i, t in enumerate(texts)]


def test_gate_compares_unrounded_bleu(tmp_path):
    from sacrebleu.metrics import BLEU

    from testbed.eval.runner import accuracy

    exact, exact_fp32 = (BLEU().corpus_score(h, [REFS]).score for h in (CONFIG, FP32))
    assert exact < 0.99 * exact_fp32 and round(exact, 2) >= 0.99 * round(exact_fp32, 2)  # the case is what it says
    sweep = _sweep(tmp_path)
    acc, g = accuracy(sweep, _outs(CONFIG), _outs(FP32))
    assert g["passed"] is False
    assert g["margin"] == pytest.approx(exact - 0.99 * exact_fp32, abs=1e-9)
    assert acc["vs_references"]["bleu"] == pytest.approx(exact, abs=1e-9)
