"""Greedy tokens with each step's top-1 / top-2 logit gap, and "the same tokens up to the first near-tie":
what two fp32 computations that add in different orders can be asserted to share (at a step whose top-2
logits are closer than the tie, either may pick either token, and everything after follows)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

NEAR_TIE = 1e-3


def greedy_with_gaps(model: Any, ids: np.ndarray, max_new: int, banned: Sequence[int],
                     eos: Iterable[int]) -> tuple[list[int], list[float]]:
    """An ``OrtModel``'s greedy tokens for one row ``ids`` (1, S), and each step's top-1 / top-2 logit gap."""
    from testbed.engines.onnxruntime.runner import ENCODER_DONE_MARK

    stop = set(eos)
    tokens: list[int] = []
    gaps: list[float] = []
    for item in model.greedy(ids, np.ones_like(ids), max_new, list(banned), return_logits=True):
        if item is ENCODER_DONE_MARK:
            continue
        nxt, logits = item
        top = np.sort(logits[0][np.isfinite(logits[0])])[-2:]
        tokens.append(int(nxt[0]))
        gaps.append(float(top[1] - top[0]))
        if tokens[-1] in stop:
            break
    return tokens, gaps


def first_near_tie(gaps: Sequence[float], tie: float = NEAR_TIE) -> int:
    """The first step whose top-2 logits are within ``tie`` (the number of steps without one)."""
    return next((i for i, g in enumerate(gaps) if g < tie), len(gaps))


def same_up_to_near_tie(got: Sequence[int], want: Sequence[int], gaps: Sequence[float], tie: float = NEAR_TIE) -> bool:
    """``got`` equals ``want`` up to ``want``'s first near-tie (all of it without one)."""
    k = first_near_tie(gaps, tie)
    return list(got[:k]) == list(want[:k]) and (k < len(want) or list(got) == list(want))
