"""StopFilter, alone: what reaches a response for every way a stop string can be split over tokens."""

from __future__ import annotations

import pytest

from testbed.serve.messages import Admitted, Done, Token
from testbed.serve.stops import StopFilter


class Job:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def run(pieces: list[str], stops: tuple[str, ...], natural_end: bool = True) -> tuple[list, Job]:
    out: list = []
    f = StopFilter(stops, out.append, arrival_ns=0)
    f.job = job = Job()
    for i, p in enumerate(pieces):
        f(Token(i + 1, p, 100 + i))
    if natural_end:
        f(Done("eos", {"token_ns": []}, tuple(range(1, len(pieces) + 1))))
    return out, job


@pytest.mark.parametrize("pieces,stops,text,n_ids", [
    (["Hello", " wor", "ld", "!"], ("world",), "Hello ", 3),        # the stop spans two tokens
    (["ab", "c\nd", "e"], ("\n",), "abc", 2),                        # stop inside a token: its head kept
    (["x", "y", "z"], ("yz", "y"), "x", 2),                          # earliest match wins
    (["a", "b", "c"], ("c",), "ab", 3),
    (["STOP"], ("STOP",), "", 1),
])
def test_the_stop_string_and_what_follows_are_never_sent(pieces, stops, text, n_ids):
    out, job = run(pieces, stops, natural_end=False)
    tokens = [m for m in out if isinstance(m, Token)]
    assert "".join(m.text for m in tokens) == text
    assert isinstance(out[-1], Done) and out[-1].finish_reason == "stop"
    assert out[-1].token_ids == tuple(range(1, n_ids + 1))
    assert len(tokens) == n_ids and job.cancelled


def test_a_partial_match_is_held_then_released_at_the_end():
    out, job = run(["a", " wor", "l"], ("world",))
    assert [m.text for m in out if isinstance(m, Token)] == ["a", " wor", "l"]
    assert out[-1].finish_reason == "eos" and not job.cancelled


def test_a_held_token_is_released_when_the_match_fails():
    out: list = []
    f = StopFilter(("wxyz",), out.append, 0)
    f(Token(1, "a w", 1))
    assert [m.text for m in out] == []  # "w" could start the stop string: held
    f(Token(2, "x", 2))
    assert out == []
    f(Token(3, "q", 3))  # "a wxq": no match possible any more
    assert [m.text for m in out] == ["a w", "x", "q"]


def test_messages_after_the_stop_are_dropped_and_others_pass():
    out: list = []
    f = StopFilter(("b",), out.append, 0)
    f(Admitted(3, ()))
    f(Token(1, "ab", 1))
    f(Token(2, "c", 2))
    f(Done("eos", {}, (1, 2)))
    assert [type(m) for m in out] == [Admitted, Token, Done] and out[1].text == "a"
