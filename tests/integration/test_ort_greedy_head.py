"""The greedy head inside the exported decoder graph (testbed.export.greedy_head) on the real Marian model:
its ids are the masked argmax of the logits at fp32, and the engine decodes the same tokens with the head
as over the logits, EOS masked in the rows whose minimum length is not reached."""

from __future__ import annotations

import numpy as np
import pytest

from testbed.config import EngineConfig
from testbed.datasets import load_dataset
from testbed.engines.base import GenerationRequest
from testbed.engines.onnxruntime.engine import OnnxRuntimeEngine

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow


def _engine(greedy_in_graph: bool) -> OnnxRuntimeEngine:
    cfg = EngineConfig(model="marian-en-de", engine="onnxruntime", threads=2)
    return OnnxRuntimeEngine(cfg, greedy_in_graph=greedy_in_graph).load()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def marian():
    eng = _engine(True)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def marian_host():
    """The CPU default: the head stripped from the session's graph, the choice over the logits in numpy."""
    eng = _engine(False)
    yield eng
    eng.close()


def test_head_ids_equal_masked_argmax_of_the_logits(marian):
    from testbed.engines.onnxruntime.runner import ENCODER_DONE_MARK, pad_batch

    m = marian.ort
    assert m.head and m.head_fits(marian.banned, marian.eos_token_ids)
    assert m.head_banned == sorted(marian.banned) and marian.banned
    texts = [ex.text for ex in load_dataset("test", limit=8)]
    ids, mask = pad_batch([marian.tokenizer(t)["input_ids"] for t in texts], marian.pad_id, left=False)
    steps = 0
    for item in m.greedy(ids, mask, 24, marian.banned, return_logits=True):
        if isinstance(item, str):
            assert item == ENCODER_DONE_MARK
            continue
        nxt, logits = item
        masked = logits.copy()
        masked[:, marian.banned] = -np.inf
        np.testing.assert_array_equal(nxt, masked.argmax(-1))
        assert not set(nxt.tolist()) & set(marian.banned)
        steps += 1
    assert steps == 24


def test_engine_tokens_with_the_head_equal_choosing_over_logits(marian, marian_host):
    texts = [ex.text for ex in load_dataset("test", limit=12)]
    plain = marian.generate(texts)
    # rows with a minimum length past their natural end: the head masks EOS in those rows only
    reqs = [GenerationRequest(text=t, max_new_tokens=len(g.token_ids) + 6,
                              min_new_tokens=len(g.token_ids) + 3 if i % 2 else 0)
            for i, (t, g) in enumerate(zip(texts, plain))]
    assert not marian_host.ort.head and "next_ids" not in [o.name for o in marian_host.ort.decoder.get_outputs()]
    with_head = marian.generate(reqs)
    over_logits = marian_host.generate(reqs)
    for i, (a, b) in enumerate(zip(with_head, over_logits)):
        assert a.token_ids == b.token_ids, texts[i]
        if i % 2:
            assert len(a.token_ids) >= len(plain[i].token_ids) + 3
            assert not set(a.token_ids[: len(plain[i].token_ids) + 2]) & set(marian.eos_token_ids)
        else:
            assert a.token_ids == plain[i].token_ids
    for eng in (marian, marian_host):
        assert eng.stream(reqs[1]).run().token_ids == with_head[1].token_ids
