"""Per-step figures of bench/engines.py: a non-streamed call's TPOT and the overhead/compute split."""

from __future__ import annotations

import pytest

from testbed.metrics.steps import call_tpot_ms, split_tpot


def test_call_tpot_divides_the_extra_time_over_the_gaps_between_tokens():
    # 1 token took 4 ms, 11 tokens took 9 ms: 10 more steps in 5 ms
    assert call_tpot_ms(9_000_000, 4_000_000, 11) == pytest.approx(0.5)


@pytest.mark.parametrize("n", [0, 1])
def test_call_tpot_is_undefined_below_two_tokens(n):
    assert call_tpot_ms(9_000_000, 4_000_000, n) is None


def test_call_tpot_is_undefined_without_both_times():
    assert call_tpot_ms(None, 4_000_000, 5) is None
    assert call_tpot_ms(9_000_000, None, 5) is None


def test_split_gives_overhead_and_the_rest_as_compute():
    over, comp = split_tpot(0.9, 0.15)
    assert over == pytest.approx(0.15) and comp == pytest.approx(0.75)


def test_split_caps_an_overhead_above_the_tpot_so_compute_is_never_negative():
    assert split_tpot(0.5, 0.8) == (0.5, 0.0)


def test_split_without_a_tpot_or_an_overhead_has_no_compute():
    assert split_tpot(None, 0.2) == (0.2, None)
    assert split_tpot(0.7, None) == (None, None)
