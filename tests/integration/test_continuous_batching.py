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
