"""Scores of one configuration's outputs: accuracy, the gate and its verdict, batch divergence.

Pure over outputs (lists of ``{"id", "output", "n_out", "token_ids"}`` dicts, in the order of the
sweep's Offline set); nothing is decoded here.  Every score is kept unrounded (rounding happens
when a report is rendered), so a gate threshold compares exact values.

* :func:`accuracy`: BLEU / chrF against the references and against the fp32 reference's outputs
  (fidelity), the exact-match rate with the fp32 outputs (token ids), the length ratio
  ``sum(N) / sum(N_fp32)``, the paired-bootstrap interval of the gate metric's difference from
  fp32, and the gate with its verdict (:func:`testbed.eval.gate.gate`).  The gate scores against
  the human references (``gate_reference = "references"``, translation) or against the fp32
  outputs (``"fp32"``: chat, where one human reply says little; MLPerf's LLM tasks ask for 99% of
  the fp32 run, which scores 100 against itself).  A set without references is gated against fp32.
* :func:`divergence`: the fraction of the divergence set whose token ids at the row's batch size
  differ from the same configuration at batch 1, with BLEU / chrF of both against the gate's target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from testbed.eval.divergence import batch_divergence, differing
from testbed.eval.gate import gate, length_ratio, paired_bootstrap
from testbed.eval.sweep import Sweep
from testbed.metrics.accuracy import score

Outputs = Sequence[dict[str, Any]]
METRIC_LABEL = {"bleu": "BLEU", "chrf": "chrF"}


def exact_match(outputs: Outputs, ref_outputs: Outputs) -> float | None:
    """Fraction of outputs whose token ids equal the fp32 reference's; None without token ids."""
    if not all("token_ids" in o for o in [*outputs, *ref_outputs]):
        return None
    d = batch_divergence([o["token_ids"] for o in outputs], [o["token_ids"] for o in ref_outputs])
    return None if d is None else 1.0 - d


def _target(sweep: Sweep, ref_outputs: Outputs, n: int | None = None) -> list[str]:
    """What the gate scores against: the references, or the fp32 reference's outputs."""
    if sweep.gated_against == "references":
        return [str(e.reference) for e in sweep.offline_set[:n]]
    return [o["output"] for o in ref_outputs[:n]]


def accuracy(
    sweep: Sweep, outputs: Outputs, ref_outputs: Outputs | None, ref_error: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(accuracy, gate)`` of the Offline outputs; see the module docstring."""
    hyps = [o["output"] for o in outputs]
    metric, label = sweep.gate_metric, METRIC_LABEL[sweep.gate_metric]
    acc: dict[str, Any] = {"set": f"offline: first {len(hyps)} examples of {sweep.dataset}",
                           "vs_references": None, "vs_fp32": None, "exact_match_vs_fp32": None,
                           "length_ratio": None, "gate_diff": None, "gate_metric": metric,
                           "gated_against": sweep.gated_against}
    if sweep.has_references:
        acc["vs_references"] = score(hyps, [str(e.reference) for e in sweep.offline_set], ndigits=None)
    if ref_outputs is None:
        g = gate(None, None, None, sweep.gate_ratio, sweep.gate_length_ratio, metric=label)
        why = ref_error or "not available"
        g["reasons"] = [why if why.startswith("not gated") else f"fp32 reference {why}"]
        return acc, g
    fp32 = [o["output"] for o in ref_outputs]
    acc["vs_fp32"] = score(hyps, fp32, ndigits=None)
    acc["exact_match_vs_fp32"] = exact_match(outputs, ref_outputs)
    acc["length_ratio"] = length_ratio([o["n_out"] for o in outputs], [o["n_out"] for o in ref_outputs])
    target = _target(sweep, ref_outputs)
    value = (acc["vs_references"] if sweep.gated_against == "references" else acc["vs_fp32"])[metric]
    value_fp32 = score(fp32, target, ndigits=None)[metric]
    boot = paired_bootstrap(hyps, fp32, target, samples=sweep.bootstrap_samples, seed=sweep.seed, metric=metric)
    acc["gate_diff"] = boot
    g = gate(value, value_fp32, acc["length_ratio"], sweep.gate_ratio, sweep.gate_length_ratio,
             interval=boot["ci95"], metric=label)
    g["against"] = sweep.gated_against
    return acc, g


def divergence(
    sweep: Sweep, batch: int, outputs: Outputs, batch1: Outputs, ref_outputs: Outputs | None,
) -> dict[str, Any]:
    """Batch divergence of the first ``len(batch1)`` outputs, and the scores at batch 1 and at ``batch``."""
    n = len(batch1)
    at_b = list(outputs[:n])
    ids_1, ids_b = [o["token_ids"] for o in batch1], [o["token_ids"] for o in at_b]
    diff = differing(ids_1, ids_b)
    out: dict[str, Any] = {"n": n, "batch": batch, "batch_divergence": batch_divergence(ids_1, ids_b),
                           "differing": len(diff), "differing_ids": [batch1[i]["id"] for i in diff[:20]],
                           "against": None, "at_batch1": None, "at_batch": None}
    if n == 0 or (sweep.gated_against == "fp32" and ref_outputs is None):
        return out
    target = _target(sweep, ref_outputs or [], n)
    out.update(against=sweep.gated_against, at_batch1=score([o["output"] for o in batch1], target, ndigits=None),
               at_batch=score([o["output"] for o in at_b], target, ndigits=None))
    return out
