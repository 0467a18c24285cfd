"""Continuous batching at fp32 gives every request the tokens it gets when decoded alone.

Rows join a running batch at chosen steps, leave on EOS, at their own length limits, or by
cancellation mid-stream; inputs of mixed lengths.  Torch and ONNX Runtime, translation and chat.
"""

from __future__ import annotations

import pytest

from testbed.config import EngineConfig
from testbed.datasets import load_dataset
from testbed.engines.base import GenerationRequest
from testbed.engines.registry import create_engine

CHAT = ["What is the capital of France?", "Give me three tips for sleeping better.", "Hi!",
        "Write a haiku about the sea.", "Explain what a CPU cache is in one sentence."]


def decode_with_joins(engine, requests, joins, cancel=None):
    """Start with rows ``joins[0]``; before iteration k add rows ``joins[k]``; cancel row r at its
    ``cancel[r]``-th token.  Returns each row's token ids, keyed by request index."""
    prepared = [engine.prepare(r) for r in requests]
    bs = engine.stream_batch([prepared[i] for i in joins.get(0, [])])
    row_of = {i: k for k, i in enumerate(joins.get(0, []))}
    cancel = cancel or {}
    step = 0
    while bs.live or any(k > step for k in joins):
        step += 1
        new = joins.get(step, [])
        if new:
            assert bs.can_join
            from testbed.engines.stream import Stream

            idx = bs.add([Stream(engine, prepared[i].request, engine.clock, prepared=prepared[i]) for i in new])
            row_of.update(zip(new, idx))
        for i, r in row_of.items():
            if i in cancel and r in bs.live and len(bs.rows[r].events) >= cancel[i]:
                bs.cancel(r)
        bs.advance()
    bs.close()
    out = {i: bs.rows[r].token_ids for i, r in row_of.items()}
    reasons = {i: bs.rows[r].finish_reason for i, r in row_of.items()}
    return out, reasons, bs.batch.padding


def _check(engine, requests):
    singles = [engine.stream(r).run().token_ids for r in requests]
    n = len(requests)
    joins = {0: [0, 1], 2: [2], 3: [3, 4], 7: list(range(5, n))}
    limits = [r.max_new_tokens for r in requests]
    got, reasons, padding = decode_with_joins(engine, requests, joins, cancel={1: 3})
    for i in range(n):
        if i == 1:
            assert got[i] == singles[i][:3] and reasons[i] == "cancelled"
        else:
            assert got[i] == singles[i], (i, got[i], singles[i])
            assert reasons[i] == ("eos" if singles[i][-1] in engine.eos_token_ids else "length")
    assert len(set(limits)) > 1  # mixed length limits
    assert 0 < padding.padded < padding.total  # rows of different lengths were padded, and counted


def _marian_requests():
    texts = [ex.text for ex in load_dataset("test", limit=10)]
    return [GenerationRequest(text=t, max_new_tokens=(6 if k == 4 else None)) for k, t in enumerate(texts)]


def _chat_requests():
    return [GenerationRequest(text=t, max_new_tokens=(5 if k == 2 else 24)) for k, t in enumerate(CHAT)]


@pytest.mark.parametrize("engine_name", ["torch", "onnxruntime"])
def test_marian_rows_joining_and_leaving_decode_as_alone(engine_name):
    eng = create_engine(EngineConfig(engine=engine_name, model="marian-en-de", threads=1)).load()
    try:
        _check(eng, _marian_requests())
    finally:
        eng.close()


@pytest.mark.parametrize("engine_name", ["torch", "onnxruntime"])
def test_chat_rows_joining_and_leaving_decode_as_alone(engine_name):
    eng = create_engine(EngineConfig(engine=engine_name, model="smollm2-135m-instruct", threads=1)).load()
    try:
        _check(eng, _chat_requests())
    finally:
        eng.close()


@pytest.mark.parametrize("engine_name", ["torch", "onnxruntime"])
def test_a_long_prompt_is_prefilled_in_chunks_while_the_running_row_keeps_stepping(engine_name):
    """Chunked prefill: the tokens are those of the prompt decoded alone, and the running row got
    tokens between the long prompt's admission and its first token (it was not stalled)."""
    eng = create_engine(EngineConfig(engine=engine_name, model="smollm2-135m-instruct", threads=1)).load()
    try:
        long_text = " ".join(["Please summarise the following notes about caching and memory."] * 20)
        reqs = [GenerationRequest(text="Name three colours.", max_new_tokens=40),
                GenerationRequest(text=long_text, max_new_tokens=8)]
        singles = [eng.stream(r).run().token_ids for r in reqs]
        prepared = [eng.prepare(r) for r in reqs]
        assert len(prepared[1].input_ids) > 150
        bs = eng.stream_batch(prepared[:1])
        bs.advance()
        from testbed.engines.stream import Stream

        [j] = bs.add([Stream(eng, reqs[1], eng.clock, prepared=prepared[1])])
        before = len(bs.rows[0].events)
        while not bs.rows[j].events:
            bs.advance(prefill_budget=32)
        during = len(bs.rows[0].events) - before
        while bs.live:
            bs.advance(prefill_budget=32)
        assert bs.rows[0].token_ids == singles[0] and bs.rows[1].token_ids == singles[1]
        assert during >= len(prepared[1].input_ids) // 32 - 1  # one step of the running row per chunk
    finally:
        eng.close()


def test_a_cancelled_prompt_stops_its_chunked_prefill():
    eng = create_engine(EngineConfig(engine="onnxruntime", model="smollm2-135m-instruct", threads=1)).load()
    try:
        long_text = " ".join(["Tell me about the history of printing presses in Europe."] * 20)
        prepared = [eng.prepare(GenerationRequest(text=t, max_new_tokens=30)) for t in ("Hello!", long_text)]
        bs = eng.stream_batch(prepared[:1])
        bs.advance()
        from testbed.engines.stream import Stream

        [j] = bs.add([Stream(eng, prepared[1].request, eng.clock, prepared=prepared[1])])
        bs.advance(prefill_budget=16)
        assert bs.batch.has_pending()
        bs.cancel(j)
        assert not bs.batch.has_pending() and bs.rows[j].finish_reason == "cancelled" and not bs.rows[j].events
        while bs.live:
            bs.advance(prefill_budget=16)
        assert bs.rows[0].token_ids == eng.stream(prepared[0].request).run().token_ids
    finally:
        eng.close()


@pytest.mark.parametrize("engine_name", ["torch", "onnxruntime"])
def test_a_short_prompt_admitted_beside_a_long_prefill_gets_its_first_token_first(engine_name):
    """Nothing running, a long prompt is being prefilled in chunks; a short one admitted after its
    first chunk finishes its own prefill first; both decode as alone."""
    eng = create_engine(EngineConfig(engine=engine_name, model="smollm2-135m-instruct", threads=1)).load()
    try:
        long_text = " ".join(["Summarise these notes on the history of the printing press in Europe."] * 24)
        reqs = [GenerationRequest(text=long_text, max_new_tokens=6), GenerationRequest(text="Hi!", max_new_tokens=6)]
        singles = [eng.stream(r).run().token_ids for r in reqs]
        prepared = [eng.prepare(r) for r in reqs]
        bs = eng.stream_batch([])
        from testbed.engines.stream import Stream

        [a] = bs.add([Stream(eng, reqs[0], eng.clock, prepared=prepared[0])])
        bs.advance(prefill_budget=32)
        assert bs.can_admit_now and not bs.rows[a].events
        [b] = bs.add([Stream(eng, reqs[1], eng.clock, prepared=prepared[1])])
        while bs.live:
            bs.advance(prefill_budget=32)
        assert bs.rows[b].events[0].t_ns < bs.rows[a].events[0].t_ns
        assert [bs.rows[a].token_ids, bs.rows[b].token_ids] == singles
    finally:
        eng.close()
