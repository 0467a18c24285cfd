"""The accuracy gate, the paired bootstrap and the Pareto frontier: pure functions, no I/O.

Gate (MLPerf style, METRICS.md): a configuration passes if ``BLEU >= ratio x BLEU_fp32``
(ratio 0.99 by default) and the output-length ratio ``sum(N_q) / sum(N_fp32)`` (tokens counted
from token ids) lies in ``[low, high]`` (``[0.9, 1.1]``).  The margins say by how much.

The paired bootstrap resamples sentences (the same indices for both systems, seeded) and
recomputes corpus BLEU from sacrebleu's per-sentence sufficient statistics -- the method of
sacrebleu's own ``--paired-bs`` -- giving a 95% interval of ``BLEU(config) - BLEU(fp32)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def gate(
    bleu: float | None, bleu_fp32: float | None, length_ratio: float | None,
    bleu_ratio: float = 0.99, length_bounds: tuple[float, float] = (0.9, 1.1),
) -> dict[str, Any]:
    """Pass/fail with margins.

    Returns ``passed`` (True, False, or None when it cannot be decided: no fp32 BLEU), ``reasons``
    (why it failed or is undecided), ``bleu_threshold`` (= ratio x fp32), ``bleu_margin``
    (BLEU - threshold: >= 0 passes), ``bleu_pct_of_fp32`` and ``length_margin`` (distance of the
    length ratio inside the nearer bound; negative = outside).
    """
    out: dict[str, Any] = {"passed": None, "reasons": [], "bleu_ratio_required": bleu_ratio,
                           "length_bounds": list(length_bounds), "bleu_threshold": None, "bleu_margin": None,
                           "bleu_pct_of_fp32": None, "length_ratio": length_ratio, "length_margin": None}
    if bleu_fp32 is None:
        out["reasons"].append("no fp32 reference BLEU")
        return out
    if bleu is None or length_ratio is None:
        out["reasons"].append("no BLEU or length ratio for this configuration")
        return out
    lo, hi = length_bounds
    threshold = bleu_ratio * bleu_fp32
    out["bleu_threshold"] = threshold
    out["bleu_margin"] = bleu - threshold
    out["bleu_pct_of_fp32"] = 100.0 * bleu / bleu_fp32 if bleu_fp32 > 0 else None
    out["length_margin"] = min(length_ratio - lo, hi - length_ratio)
    ok_bleu = bleu >= threshold
    ok_len = lo <= length_ratio <= hi
    if not ok_bleu:
        out["reasons"].append(f"BLEU {bleu:.2f} < {bleu_ratio:g} x fp32 {bleu_fp32:.2f} = {threshold:.2f}")
    if not ok_len:
        out["reasons"].append(f"length ratio {length_ratio:.3f} outside [{lo:g}, {hi:g}]")
    out["passed"] = ok_bleu and ok_len
    return out


def length_ratio(n_out: Sequence[int], n_out_fp32: Sequence[int]) -> float | None:
    """``sum(N_q) / sum(N_fp32)`` over the same sentences; None when the fp32 side produced nothing."""
    if len(n_out) != len(n_out_fp32):
        raise ValueError(f"{len(n_out)} outputs vs {len(n_out_fp32)} fp32 outputs: they must pair one to one")
    total = sum(n_out_fp32)
    return sum(n_out) / total if total > 0 else None


def paired_bootstrap(
    hyps: Sequence[str], hyps_fp32: Sequence[str], refs: Sequence[str], samples: int = 1000, seed: int = 0,
) -> dict[str, Any]:
    """95% interval of ``BLEU(hyps) - BLEU(hyps_fp32)`` against ``refs`` by paired bootstrap.

    ``diff`` is the difference on the full set (as the corpus scores give it); ``ci95`` the 2.5th
    and 97.5th percentiles of the resampled differences; ``significant`` whether 0 lies outside it.
    """
    import numpy as np
    from sacrebleu.metrics import BLEU

    if not len(hyps) == len(hyps_fp32) == len(refs):
        raise ValueError(f"{len(hyps)} hypotheses, {len(hyps_fp32)} fp32 hypotheses, {len(refs)} references: "
                         "they must pair one to one")
    bleu = BLEU()
    ref_docs = [list(refs)]
    a = np.asarray(bleu._extract_corpus_statistics(list(hyps), ref_docs), dtype=np.int64)
    b = np.asarray(bleu._extract_corpus_statistics(list(hyps_fp32), ref_docs), dtype=np.int64)

    def corpus(stats: Any) -> float:
        return float(bleu._compute_score_from_stats(stats.tolist()).score)

    diff = corpus(a.sum(0)) - corpus(b.sum(0))
    out: dict[str, Any] = {"diff": diff, "ci95": None, "samples": samples, "seed": seed, "significant": None}
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
