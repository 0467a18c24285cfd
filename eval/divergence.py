"""Batch divergence: how many outputs change when the same configuration decodes at another batch size.

``batch_divergence(a, b)`` is the fraction of aligned items whose token-id sequences differ:
``#{i : a[i] != b[i]} / n``.  It is 0.0 for a batch-invariant engine (fp32 kernels with
per-row arithmetic), and can be above 0 for dynamic int8 (one activation scale over the whole
batch, so a sentence's output depends on what it is batched with, and on the CPU's kernels).
Items are compared as whole sequences of token ids, never as text (two token sequences can
detokenise to the same string).  Pure: no I/O, no engine; ``bench/engines.py`` and the sweep
runner both call it.
"""

from __future__ import annotations

from collections.abc import Sequence

TokenIds = Sequence[int]


def differing(a: Sequence[TokenIds], b: Sequence[TokenIds]) -> list[int]:
    """Indices ``i`` where ``a[i]`` and ``b[i]`` are different token-id sequences (order kept)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} outputs vs {len(b)} outputs: batch divergence compares aligned lists "
                         "(the same inputs in the same order)")
    return [i for i, (x, y) in enumerate(zip(a, b)) if list(x) != list(y)]


def batch_divergence(a: Sequence[TokenIds], b: Sequence[TokenIds]) -> float | None:
    """Fraction in [0, 1] of aligned outputs whose token ids differ; None for empty lists (n/a, not 0)."""
    diff = differing(a, b)
    return len(diff) / len(a) if a else None
