"""The embedded dialogue model conditions its replies on the conversation (the first model committed did not:
its encoder had collapsed, so it gave one reply, ``i ' m not sure``, to every prompt)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_its_encoder_tells_prompts_apart():
    from transformers import AutoTokenizer, BlenderbotSmallForConditionalGeneration

    from testbed.registry import resolve_model

    path = resolve_model("chitchat-bbs-10m").local_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = BlenderbotSmallForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        states = [model.get_encoder()(**tok(t, return_tensors="pt")).last_hidden_state[0].mean(0)
                  for t in ("i love my dog, he is so cute", "what classes are you taking this semester?")]
    # the collapsed encoder's states for two prompts differed by at most 0.0024 (its embeddings by 3.0)
    assert float((states[0] - states[1]).abs().max()) > 0.1


def test_it_gives_different_prompts_different_replies():
    from testbed.config import EngineConfig
    from testbed.datasets import load_dataset
    from testbed.engines.registry import create_engine
    from testbed.engines.types import GenerationRequest

    examples = load_dataset("chat", limit=16)
    engine = create_engine(EngineConfig(model="chitchat-bbs-10m", engine="torch", precision="fp32", threads=1,
                                        max_new_tokens=16))
    try:
        replies = [g.text for g in engine.generate([GenerationRequest(messages=tuple(e.messages))
                                                    for e in examples])]
    finally:
        engine.close()
    assert all(r.strip() for r in replies)
    assert len(set(replies)) >= 4, replies  # the collapsed model: 1 distinct reply of 16
