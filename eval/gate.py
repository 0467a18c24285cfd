"""The accuracy gate, its verdict, the paired bootstrap and the Pareto frontier: pure functions, no I/O.

Gate (MLPerf style, METRICS.md): a configuration passes if ``score >= ratio x score_fp32``
(ratio 0.99 by default) and the output-length ratio ``sum(N_q) / sum(N_fp32)`` (tokens counted
from token ids) lies in ``[low, high]`` (``[0.9, 1.1]``).  The score is BLEU (or chrF) against the
human references, or -- where references say little, as for chat -- against the fp32 reference's
own outputs (MLPerf's LLM tasks: within 99% of the fp32 run, which scores 100 against itself).
The margins say by how much.

The paired bootstrap resamples sentences (the same indices for both systems, seeded) and
recomputes the corpus score from sacrebleu's per-sentence sufficient statistics -- the method of
sacrebleu's own ``--paired-bs`` -- giving a 95% interval of ``score(config) - score(fp32)``.

The **verdict** reads that interval against the threshold (``(ratio - 1) x score_fp32`` in the
same difference units): ``pass`` when the whole interval lies at or above it, ``fail`` when the
whole interval lies below it (or the length ratio is outside its bounds), ``within noise`` when
the interval straddles it -- the test set cannot tell.  Without an interval the point estimate
decides and the verdict says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PASS, FAIL, NOISE = "pass", "fail", "within noise"


def gate(
    score: float | None, score_fp32: float | None, length_ratio: float | None,
    ratio: float = 0.99, length_bounds: tuple[float, float] = (0.9, 1.1),
    interval: Sequence[float] | None = None, metric: str = "BLEU",
) -> dict[str, Any]:
    """Pass/fail with margins, and the verdict against the noise of the test set.

    ``score`` / ``score_fp32`` are the gate metric's unrounded scores (``metric`` names it: BLEU or
    chrF); ``interval`` is the 95% interval of ``score - score_fp32`` (:func:`paired_bootstrap`).
    Returns ``passed`` (the point estimate's rule: True, False, or None when it cannot be decided:
    no fp32 score), ``verdict`` (``pass`` / ``fail`` / ``within noise``, or None when undecided),
    ``reasons`` (why it failed or is undecided), ``threshold`` (= ratio x fp32), ``margin``
    (score - threshold: >= 0 passes), ``diff_threshold`` (the threshold as a difference from fp32),
    ``interval``, ``pct_of_fp32`` and ``length_margin`` (distance of the length ratio inside the
    nearer bound; negative = outside).
    """
    out: dict[str, Any] = {"passed": None, "verdict": None, "reasons": [], "metric": metric, "score": score,
                           "score_fp32": score_fp32, "ratio_required": ratio, "threshold": None, "margin": None,
                           "pct_of_fp32": None, "diff_threshold": None,
                           "interval": list(interval) if interval is not None else None,
                           "length_ratio": length_ratio, "length_bounds": list(length_bounds), "length_margin": None}
    if score_fp32 is None:
        out["reasons"].append(f"no fp32 reference {metric}")
        return out
    if score is None or length_ratio is None:
        out["reasons"].append(f"no {metric} or length ratio for this configuration")
        return out
    lo, hi = length_bounds
    threshold = ratio * score_fp32
    out.update(threshold=threshold, margin=score - threshold, diff_threshold=threshold - score_fp32,
               pct_of_fp32=100.0 * score / score_fp32 if score_fp32 > 0 else None,
               length_margin=min(length_ratio - lo, hi - length_ratio))
    ok_score = score >= threshold
    ok_len = lo <= length_ratio <= hi
    if not ok_score:
        out["reasons"].append(f"{metric} {score:.2f} < {ratio:g} x fp32 {score_fp32:.2f} = {threshold:.2f}")
    if not ok_len:
        out["reasons"].append(f"length ratio {length_ratio:.3f} outside [{lo:g}, {hi:g}]")
    out["passed"] = ok_score and ok_len
    out["verdict"] = v = verdict(out["passed"], ok_len, out["diff_threshold"], interval)
    if interval is not None and ok_len and v != (PASS if ok_score else FAIL):
        where = "straddles" if v == NOISE else ("lies above" if v == PASS else "lies below")
        out["reasons"].append(f"the 95% interval of {metric} - fp32, [{interval[0]:+.2f}, {interval[1]:+.2f}], "
                              f"{where} the threshold {out['diff_threshold']:+.2f}")
    return out


def verdict(passed: bool, length_ok: bool, diff_threshold: float, interval: Sequence[float] | None) -> str:
    """``pass`` / ``fail`` / ``within noise`` (see the module docstring); the point rule without an interval."""
    if not length_ok:
        return FAIL
    if interval is None:
        return PASS if passed else FAIL
    lo, hi = interval
    if lo >= diff_threshold:
        return PASS
    if hi < diff_threshold:
        return FAIL
    return NOISE


def length_ratio(n_out: Sequence[int], n_out_fp32: Sequence[int]) -> float | None:
    """``sum(N_q) / sum(N_fp32)`` over the same sentences; None when the fp32 side produced nothing."""
    if len(n_out) != len(n_out_fp32):
        raise ValueError(f"{len(n_out)} outputs vs {len(n_out_fp32)} fp32 outputs: they must pair one to one")
    total = sum(n_out_fp32)
    return sum(n_out) / total if total > 0 else None


METRICS = ("bleu", "chrf")


def paired_bootstrap(
    hyps: Sequence[str], hyps_fp32: Sequence[str], refs: Sequence[str], samples: int = 1000, seed: int = 0,
    metric: str = "bleu",
) -> dict[str, Any]:
    """95% interval of ``score(hyps) - score(hyps_fp32)`` against ``refs`` by paired bootstrap.

    ``metric`` is ``bleu`` or ``chrf`` (sacrebleu defaults).  ``refs`` may be the fp32 outputs
    themselves (``hyps_fp32 == refs``): the interval is then that of the agreement score minus
    the fp32 run's own (100).  ``diff`` is the difference on the full set (as the corpus scores
    give it); ``ci95`` the 2.5th and 97.5th percentiles of the resampled differences;
    ``significant`` whether 0 lies outside it.
    """
    import numpy as np
    from sacrebleu.metrics import BLEU, CHRF

    if not len(hyps) == len(hyps_fp32) == len(refs):
        raise ValueError(f"{len(hyps)} hypotheses, {len(hyps_fp32)} fp32 hypotheses, {len(refs)} references: "
                         "they must pair one to one")
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not supported; allowed: {', '.join(METRICS)}")
    scorer: Any = BLEU() if metric == "bleu" else CHRF()
    ref_docs = [list(refs)]
    a = np.asarray(scorer._extract_corpus_statistics(list(hyps), ref_docs), dtype=np.int64)
    b = np.asarray(scorer._extract_corpus_statistics(list(hyps_fp32), ref_docs), dtype=np.int64)

    def corpus(stats: Any) -> float:
        return float(scorer._compute_score_from_stats(stats.tolist()).score)

    diff = corpus(a.sum(0)) - corpus(b.sum(0))
    out: dict[str, Any] = {"diff": diff, "ci95": None, "samples": samples, "seed": seed, "significant": None,
                           "metric": metric}
    if samples > 0 and len(hyps) > 1:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(hyps), size=(samples, len(hyps)))
        diffs = np.array([corpus(a[i].sum(0)) - corpus(b[i].sum(0)) for i in idx])
        lo, hi = (float(x) for x in np.percentile(diffs, [2.5, 97.5]))
        out["ci95"] = [lo, hi]
        out["significant"] = not (lo <= 0.0 <= hi)
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when lower x (latency) and higher y (BLEU) are better.

    A point is dominated if another is at least as good on both axes and better on one.
    Returned in increasing x.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best_y = float("-inf")
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front
