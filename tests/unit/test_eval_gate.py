"""The gate, the length ratio, the paired bootstrap and the Pareto frontier (pure functions)."""

from __future__ import annotations

import pytest

from testbed.eval.gate import gate, length_ratio, paired_bootstrap, pareto_front


def test_gate_mlperf_worked_example():
    # METRICS.md: CTranslate2 int8 27.65 vs fp32 27.90 passes (99.1%); int16 27.53 fails (98.7%)
    ok = gate(27.65, 27.90, 1.0)
    assert ok["passed"] is True and ok["reasons"] == []
    assert ok["threshold"] == pytest.approx(0.99 * 27.90)
    assert ok["margin"] == pytest.approx(27.65 - 27.621)
    assert ok["pct_of_fp32"] == pytest.approx(99.104, abs=1e-3)
    bad = gate(27.53, 27.90, 1.0)
    assert bad["passed"] is False and bad["margin"] < 0
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
    assert g["margin"] == pytest.approx(20.0 - 29.7)
    inside = gate(30.0, 30.0, 1.02)
    assert inside["length_margin"] == pytest.approx(0.08)


def test_gate_without_reference_is_undecided_not_passed():
    g = gate(30.0, None, 1.0)
    assert g["passed"] is None and g["verdict"] is None and g["reasons"] == ["no fp32 reference BLEU"]
    assert gate(None, 30.0, None)["passed"] is None


def test_gate_custom_tier():
    assert gate(29.95, 30.0, 1.0, ratio=0.999)["passed"] is False
    assert gate(29.98, 30.0, 1.0, ratio=0.999)["passed"] is True


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


# the verdict: the 95% interval of score - fp32 read against the threshold (here 0.99 x 30 -> -0.30)
@pytest.mark.parametrize("interval, expect", [
    ((-0.20, +0.30), "pass"),           # the whole interval at or above -0.30
    ((-0.30, +0.10), "pass"),           # the bound itself passes, like the point rule
    ((-0.68, -0.03), "within noise"),   # straddles -0.30 (the ONNX Runtime int8 row)
    ((-0.90, -0.31), "fail"),           # the whole interval below
])
def test_verdict_reads_the_interval_against_the_threshold(interval, expect):
    g = gate(29.8, 30.0, 1.0, interval=interval)
    assert g["diff_threshold"] == pytest.approx(-0.30)
    assert g["verdict"] == expect and g["interval"] == list(interval)
    assert g["passed"] is True  # the point estimate alone (29.8 >= 29.7) would have passed every one
    if expect == "within noise":
        assert "straddles the threshold -0.30" in g["reasons"][-1]


def test_verdict_within_noise_also_when_the_point_fails():
    g = gate(29.6, 30.0, 1.0, interval=(-0.7, +0.1))
    assert g["passed"] is False and g["verdict"] == "within noise"


def test_verdict_length_outside_fails_whatever_the_interval():
    assert gate(30.0, 30.0, 1.2, interval=(-0.1, +0.1))["verdict"] == "fail"


def test_verdict_without_interval_is_the_point_rule():
    assert gate(29.8, 30.0, 1.0)["verdict"] == "pass"
    assert gate(29.6, 30.0, 1.0)["verdict"] == "fail"
    assert gate(29.6, None, 1.0)["verdict"] is None


def test_paired_bootstrap_chrf_against_the_fp32_outputs():
    from sacrebleu.metrics import CHRF

    # the fp32 outputs as the reference: the fp32 run scores 100 against itself
    res = paired_bootstrap(WORSE, REFS, REFS, samples=200, seed=1, metric="chrf")
    assert res["metric"] == "chrf"
    assert res["diff"] == pytest.approx(CHRF().corpus_score(WORSE, [REFS]).score - 100.0)
    assert res["ci95"][1] < 0
    with pytest.raises(ValueError, match="allowed: bleu, chrf"):
        paired_bootstrap(WORSE, REFS, REFS, metric="rouge")
