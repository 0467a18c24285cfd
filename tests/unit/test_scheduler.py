"""The scheduler: static batches vs continuous joins, slots freed at once, refusals, counters.

A null engine that sleeps per decoding step, so a request sent while another decodes arrives
mid-batch; the assertions are on order and step indices (which the scheduler decides), never on
durations.
"""

from __future__ import annotations

import threading
import time

import pytest

from testbed.config import EngineConfig
from testbed.engines.base import Capabilities, GenerationRequest
from testbed.engines.fake.engine import NullEngine
from testbed.errors import ConfigError
from testbed.serve.batcher import BatchConfig, Batcher
from testbed.serve.messages import Admitted, Done, Failed, Token


class SteppedNull(NullEngine):
    """A null engine whose every token takes ``delay`` seconds (the batch's step time)."""

    delay = 0.01

    def _decode(self, prepared):
        for item in super()._decode(prepared):
            if isinstance(item, int):
                time.sleep(self.delay)
            yield item


class Collector:
    def __init__(self) -> None:
        self.msgs: list = []
        self.done = threading.Event()

    def __call__(self, msg) -> None:
        self.msgs.append(msg)
        if isinstance(msg, (Done, Failed)):
            self.done.set()

    @property
    def final(self):
        assert self.done.wait(30), self.msgs
        return self.msgs[-1]

    def tokens(self) -> int:
        return sum(isinstance(m, Token) for m in self.msgs)


def _run_two(mode: str, max_batch: int = 4):
    """A long request (40 tokens), then, once it has produced 5 tokens, a short one (3 tokens)."""
    eng = SteppedNull(EngineConfig(engine="null", max_new_tokens=64)).load()
    b = Batcher(eng, BatchConfig(max_batch_size=max_batch, max_wait_ms=0, batching=mode))
    try:
        long, short = Collector(), Collector()
        b.submit(GenerationRequest(text="a b c", max_new_tokens=40), long)
        while long.tokens() < 5:
            time.sleep(0.002)
        b.submit(GenerationRequest(text="d e", max_new_tokens=3), short)
        return long.final, short.final, b.stats()
    finally:
        b.stop()


def test_continuous_a_request_joins_the_running_batch_and_leaves_before_it_ends():
    long, short, stats = _run_two("continuous")
    assert isinstance(long, Done) and isinstance(short, Done)
    assert short.timing["join_step"] >= 5 and short.timing["batch_size"] == 2
    assert short.timing["end_ns"] < long.timing["end_ns"]  # it did not wait for the long one
    assert len(short.token_ids) == 3 and len(long.token_ids) == 40
    assert stats["joins"] == 1 and stats["batches"] == 1 and stats["batching"] == "continuous"


def test_static_a_request_waits_for_the_running_batch_to_end():
    long, short, stats = _run_two("static")
    assert isinstance(long, Done) and isinstance(short, Done)
    assert short.timing["decode_start_ns"] >= long.timing["end_ns"]
    assert short.timing["join_step"] == 0 and stats["joins"] == 0 and stats["batches"] == 2


def test_a_cancelled_row_frees_its_slot_at_the_next_step():
    eng = SteppedNull(EngineConfig(engine="null", max_new_tokens=64)).load()
    b = Batcher(eng, BatchConfig(max_batch_size=1, max_wait_ms=0, batching="continuous"))
    try:
        first, second = Collector(), Collector()
        job = b.submit(GenerationRequest(text="a", max_new_tokens=60), first)
        while first.tokens() < 3:
            time.sleep(0.002)
        b.submit(GenerationRequest(text="b", max_new_tokens=2), second)
        job.cancel()
        assert isinstance(second.final, Done) and len(second.final.token_ids) == 2
        assert first.tokens() < 20  # the cancelled row stopped long before its 60 tokens
        assert not first.done.is_set()  # nobody listens to a cancelled job: no final message
    finally:
        b.stop()


def test_messages_are_typed_and_in_order():
    eng = NullEngine(EngineConfig(engine="null", max_new_tokens=4)).load()
    b = Batcher(eng, BatchConfig(batching="continuous"))
    try:
        c = Collector()
        b.submit(GenerationRequest(text="x y"), c)
        assert isinstance(c.final, Done)
        kinds = [type(m) for m in c.msgs]
        assert kinds == [Admitted, Token, Token, Token, Token, Done]
        assert [m.t_ns for m in c.msgs[1:5]] == c.final.timing["token_ns"]
    finally:
        b.stop()


class StaticOnly(NullEngine):
    capabilities = Capabilities(devices=("cpu",), precisions=("fp32",), batching="static",
                                join_refusal="its runtime cannot add a row to a running batch")


def test_continuous_batching_is_refused_with_the_engines_reason_not_downgraded():
    eng = StaticOnly(EngineConfig(engine="null")).load()
    with pytest.raises(ConfigError, match="cannot add a row to a running batch"):
        Batcher(eng, BatchConfig(batching="continuous"))
    Batcher(eng, BatchConfig(batching="static")).stop()


def test_unknown_batching_mode_is_a_clear_error():
    with pytest.raises(ConfigError, match="static, continuous"):
        BatchConfig(batching="dynamic")
