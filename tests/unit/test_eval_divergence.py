"""batch_divergence: the fraction of aligned outputs whose token ids differ (pure arithmetic)."""

from __future__ import annotations

import pytest

from testbed.eval.divergence import batch_divergence, differing


def test_counts_whole_sequences_that_differ():
    at1 = [[5, 6, 0], [7, 0], [8, 9, 10, 0], [11, 0]]
    atb = [[5, 6, 0], [7, 7, 0], [8, 9, 10, 0], [11]]  # item 1 longer, item 3 lost its EOS
    assert differing(at1, atb) == [1, 3]
    assert batch_divergence(at1, atb) == 0.5


def test_identical_is_zero_and_all_different_is_one():
    ids = [[1, 2], [3], []]
    assert batch_divergence(ids, [list(x) for x in ids]) == 0.0
    assert batch_divergence([[1], [2]], [[2], [1]]) == 1.0


def test_tuples_and_lists_compare_by_value():
    assert batch_divergence([(1, 2), (3,)], [[1, 2], [3]]) == 0.0


def test_empty_is_not_applicable_not_zero():
    assert batch_divergence([], []) is None


def test_misaligned_lists_are_refused():
    with pytest.raises(ValueError, match="2 outputs vs 1 outputs"):
        batch_divergence([[1], [2]], [[1]])
