"""testbed.engines.step.length_groups: the rows an encoder pass pads together."""

from __future__ import annotations

import random

import pytest

from testbed.engines.step import length_groups


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("waste", [0.0, 0.1, 0.3])
def test_groups_partition_the_rows_within_the_waste_bound(seed, waste):
    rng = random.Random(seed)
    lengths = [rng.choice([1, 2, 3, 5, 8, 13, 40, 70]) + rng.randrange(3) for _ in range(rng.randrange(1, 40))]
    groups = length_groups(lengths, waste)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        longest = max(lengths[i] for i in g)
        padded = longest * len(g) - sum(lengths[i] for i in g)
        assert padded <= waste * longest * len(g) + 1e-9
    # sorted by length, and no group could have taken the next group's shortest row within the bound
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(flat)
    for a, b in zip(groups, groups[1:]):
        cand = [*a, b[0]]
        longest = max(lengths[i] for i in cand)
        assert longest * len(cand) - sum(lengths[i] for i in cand) > waste * longest * len(cand)


def test_equal_lengths_form_one_group_and_an_outlier_its_own():
    assert length_groups([7] * 32) == [list(range(32))]
    assert length_groups([5, 70, 5, 5], 0.1) == [[0, 2, 3], [1]]
    assert length_groups([]) == []
