"""The skeleton checkpoint: same vocabulary, tokenizer and decoding spec; 1 layer at width 16; never ends early."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_checkpoints import build  # noqa: E402

from testbed.registry import info_from_config  # noqa: E402
from testbed.skeleton import WIDTH, skeleton_dir  # noqa: E402


@pytest.mark.parametrize("family", ["marian", "llama"])
def test_skeleton_keeps_the_vocabulary_shrinks_the_layers_and_runs_to_max_new_tokens(family, tmp_path, monkeypatch):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    src = build(family, tmp_path / "tiny")
    info = info_from_config(src)
    d = skeleton_dir(info)
    assert skeleton_dir(info) == d  # cached
    a, b = AutoConfig.from_pretrained(src), AutoConfig.from_pretrained(d)
    assert b.vocab_size == a.vocab_size
    width = getattr(b, "d_model", None) or b.hidden_size
    layers = getattr(b, "decoder_layers", None) or b.num_hidden_layers
    assert (width, layers) == (WIDTH, 1)
    tok_a, tok_b = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(d)
    assert tok_b("a small test")["input_ids"] == tok_a("a small test")["input_ids"]
    seq2seq = info.architecture == "seq2seq"
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(d).eval()
    ids = torch.tensor([tok_b("a small test")["input_ids"]])
    # (Marian's generation config forces EOS at the length limit: not a choice of the logits)
    out = model.generate(ids, max_new_tokens=12, do_sample=False, num_beams=1, forced_eos_token_id=None)
    new = out[0, 1:] if seq2seq else out[0, ids.shape[1]:]
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    assert len(new) == 12 and not eos_ids & set(new.tolist())  # runs to max_new_tokens
    # EOS silenced: its logit is 0 whatever the hidden state (the saved, reloaded weights)
    assert float(model.get_output_embeddings().weight[sorted(eos_ids)].abs().sum()) == 0.0
    bias = getattr(model, "final_logits_bias", None)
    assert bias is None or float(bias[..., sorted(eos_ids)].abs().sum()) == 0.0
