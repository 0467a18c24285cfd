"""The gate, the length ratio, the paired bootstrap and the Pareto frontier (pure functions)."""

from __future__ import annotations

import pytest

from testbed.eval.gate import gate, length_ratio, paired_bootstrap, pareto_front


def test_gate_mlperf_worked_example():
    # METRICS.md: CTranslate2 int8 27.65 vs fp32 27.90 passes (99.1%); int16 27.53 fails (98.7%)
    ok = gate(27.65, 27.90, 1.0)
    assert ok["passed"] is True and ok["reasons"] == []
    assert ok["bleu_threshold"] == pytest.approx(0.99 * 27.90)
    assert ok["bleu_margin"] == pytest.approx(27.65 - 27.621)
    assert ok["bleu_pct_of_fp32"] == pytest.approx(99.104, abs=1e-3)
    bad = gate(27.53, 27.90, 1.0)
    assert bad["passed"] is False and bad["bleu_margin"] < 0
    assert "27.53 < 0.99 x fp32 27.90" in bad["reasons"][0]


def test_gate_exact_threshold_passes_and_bounds_are_inclusive():
    assert gate(99.0, 100.0, 0.9)["passed"] is True
    assert gate(99.0, 100.0, 1.1)["passed"] is True


@pytest.mark.parametrize("ratio", [0.899, 1.101, 0.5, 2.0])
def test_gate_length_ratio_outside_fails_even_with_good_bleu(ratio):
    g = gate(30.0, 30.0, ratio)
    assert g["passed"] is False
    assert g["length_margin"] < 0
    assert any("length ratio" in r for r in g["reasons"])


def test_gate_both_failures_listed_and_margin_sign():
    g = gate(20.0, 30.0, 1.5)
    assert g["passed"] is False and len(g["reasons"]) == 2
    assert g["bleu_margin"] == pytest.approx(20.0 - 29.7)
    inside = gate(30.0, 30.0, 1.02)
    assert inside["length_margin"] == pytest.approx(0.08)


def test_gate_without_reference_is_undecided_not_passed():
    g = gate(30.0, None, 1.0)
    assert g["passed"] is None and g["reasons"] == ["no fp32 reference BLEU"]
    assert gate(None, 30.0, None)["passed"] is None


def test_gate_custom_tier():
    assert gate(29.95, 30.0, 1.0, bleu_ratio=0.999)["passed"] is False
    assert gate(29.98, 30.0, 1.0, bleu_ratio=0.999)["passed"] is True


def test_length_ratio():
    assert length_ratio([10, 12], [11, 11]) == pytest.approx(1.0)
    assert length_ratio([5, 5], [10, 10]) == pytest.approx(0.5)
    assert length_ratio([1], [0]) is None
    with pytest.raises(ValueError, match="pair one to one"):
        length_ratio([1, 2], [1])


REFS = ["the cat sat on the mat", "a quick brown fox jumps", "open the file menu and click save",
        "select the range of cells", "press enter to confirm", "the dialog closes when you click ok"] * 3
WORSE = ["the cat sat on a mat", "a brown fox jumps", "open the menu and click save",
         "select range of cells", "press enter", "the dialog closes when you click ok"] * 3


def test_paired_bootstrap_matches_corpus_scores_and_is_seeded():
    from sacrebleu.metrics import BLEU

    res = paired_bootstrap(WORSE, REFS, REFS, samples=300, seed=7)
    expect = BLEU().corpus_score(WORSE, [REFS]).score - BLEU().corpus_score(REFS, [REFS]).score
    assert res["diff"] == pytest.approx(expect)
    lo, hi = res["ci95"]
    assert lo <= res["diff"] <= hi and hi < 0 and res["significant"] is True
    assert paired_bootstrap(WORSE, REFS, REFS, samples=300, seed=7) == res
    assert paired_bootstrap(WORSE, REFS, REFS, samples=300, seed=8)["ci95"] != res["ci95"]


def test_paired_bootstrap_identical_systems_give_zero_interval():
    res = paired_bootstrap(WORSE, WORSE, REFS, samples=100, seed=0)
    assert res["diff"] == 0 and res["ci95"] == [0.0, 0.0] and res["significant"] is False


def test_paired_bootstrap_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="pair one to one"):
        paired_bootstrap(WORSE[:3], REFS, REFS)


def test_pareto_front():
    pts = [(100.0, 30.0), (50.0, 29.0), (60.0, 28.0), (200.0, 30.5), (50.0, 27.0), (300.0, 30.5)]
    # (60, 28) is dominated by (50, 29); (50, 27) too; (300, 30.5) by (200, 30.5)
    assert pareto_front(pts) == [1, 0, 3]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0)]) == [0]
