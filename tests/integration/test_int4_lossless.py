"""int4-lossless end to end on a tiny Llama whose weights went through GGUF's Q4_1 / Q8_0 blocks
(tests/tiny_checkpoints.build_gguf_like: what the embedded chat model's checkpoint is): the artefact
packs every projection and the head, passes the exporter's strict fp32 validation, and decodes the
fp32 engine's tokens; a checkpoint without such blocks is refused with the reason."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import tiny_checkpoints as T
from near_ties import greedy_with_gaps, same_up_to_near_tie

from testbed.config import EngineConfig
from testbed.engines.registry import create_engine
from testbed.errors import ConfigError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="pip install 'testbed[cpu]'"),
]

PROMPTS = ("Click OK to close the dialog.", "Select the range of cells that you want to sort.", "Yes.")
NEW = 16
# int4-lossless adds in another order than fp32 (block terms; another kernel at one row than at
# several): a step whose fp32 top-2 logits are closer than this may be decided either way
NEAR_TIE = 1e-3


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("int4-lossless")


def _engine(model, name, precision):
    return create_engine(EngineConfig(model=str(model), engine=name, precision=precision, threads=1,
                                      max_new_tokens=NEW))


def _fp32_steps(art, prompt):
    """The fp32 graph's greedy tokens for ``prompt`` (batch 1) and each step's top-1 / top-2 logit gap."""
    from transformers import AutoTokenizer

    from testbed.engines.onnxruntime.runner import OrtModel, SessionSettings
    from testbed.export.validation import prompt_ids

    m = OrtModel(art, SessionSettings(threads=1))
    ids = np.array([prompt_ids(AutoTokenizer.from_pretrained(art), prompt, "causal")], dtype=np.int64)
    return greedy_with_gaps(m, ids, NEW, m.meta["banned"], m.meta["eos_token_ids"])


def _same(got, want, gaps):
    """``got`` equals the fp32 tokens up to the first near-tie (all of them without one)."""
    return same_up_to_near_tie(got, want, gaps, NEAR_TIE)


def test_int4_lossless_decodes_the_fp32_tokens(root):
    model = T.build_gguf_like(root)
    ref = _engine(model, "onnxruntime", "fp32")
    eng = _engine(model, "onnxruntime", "int4-lossless")
    try:
        steps = [_fp32_steps(ref.artifact, p) for p in PROMPTS]
        got = [g.token_ids for g in eng.generate(list(PROMPTS))]
        stream = [eng.stream(p).run().token_ids for p in PROMPTS]
        manifest = json.loads((eng.artifact / "manifest.json").read_text())
    finally:
        ref.close()
        eng.close()
    # 2 layers x 5 weight MatMuls on Q4_1 blocks (the graph computes q/k/v in one), the tied head on
    # Q8_0; gate/up share a call; the embedding gathered from its Q8_0 bytes
    assert manifest["packed"]["decoder.onnx"] == {"q4": 10, "q8": 1, "float": 0, "nbits_nodes": 9, "gather_q8": 1}
    assert manifest["quantized_matmuls"]["decoder.onnx"]["MatMulNBits"] == 9
    # the exporter's strict check (fp32's: the same greedy tokens as torch, logits within 1e-3) passed
    assert manifest["validation"]["identical_greedy_outputs"] == manifest["validation"]["sentences"]
    assert all(len(t) >= 2 for t, _ in steps)
    for batch_ids, stream_ids, (want, gaps) in zip(got, stream, steps):
        assert _same(batch_ids, want, gaps), (batch_ids, want)
        assert _same(stream_ids, want, gaps), (stream_ids, want)


def test_int4_lossless_refuses_weights_without_blocks(root):
    with pytest.raises(ConfigError, match=r"int4-lossless.*GGUF Q4_1 / Q8_0 blocks.*No weight MatMul"):
        _engine(T.build("llama", root), "onnxruntime", "int4-lossless")
