"""Accuracy with sacrebleu's object API: BLEU and chrF, each with its signature string.

Scores are computed on detokenised output against one reference set: the human references,
or the fp32 output of the same model (fidelity).  Mismatched lengths are refused, not padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from testbed.errors import TestbedError


def score(hypotheses: Sequence[str], references: Sequence[str], ndigits: int | None = 2) -> dict[str, Any]:
    """``{"bleu": float, "bleu_signature": str, "chrf": float, "chrf_signature": str, "n": int}``.

    Scores are rounded to ``ndigits`` decimals for display; ``ndigits=None`` keeps sacrebleu's exact
    value, which is what any comparison (a gate threshold, a difference) must use.
    """
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise TestbedError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: they must pair one to one"
        )
    if not hypotheses:
        raise TestbedError("no hypotheses to score")
    bleu, chrf = BLEU(), CHRF()
    refs = [list(references)]
    b = bleu.corpus_score(list(hypotheses), refs)
    c = chrf.corpus_score(list(hypotheses), refs)
    def r(x: float) -> float:
        return x if ndigits is None else round(x, ndigits)

    return {
        "bleu": r(b.score), "bleu_signature": str(bleu.get_signature()),
        "chrf": r(c.score), "chrf_signature": str(chrf.get_signature()), "n": len(hypotheses),
    }
