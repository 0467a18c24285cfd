"""Pruning on tiny random models (no checkpoint on disk): sparsity, shrinking, config, selection."""

from __future__ import annotations

import pytest
import torch

from testbed.errors import ConfigError
from testbed.prune import PruningError, apply_pruning, included_linears, prune_structured, spec_str


def tiny_marian():
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(0)
    cfg = MarianConfig(vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
                       pad_token_id=63, decoder_start_token_id=63, eos_token_id=0)
    return MarianMTModel(cfg).eval()


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("make", [tiny_marian, tiny_llama])
@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_unstructured_reaches_sparsity_on_included_weights_only(make, sparsity):
    model = make()
    emb = model.get_input_embeddings().weight.clone()
    stats = apply_pruning(model, f"unstructured:{sparsity}")
    assert stats["sparsity"] == pytest.approx(sparsity, abs=1e-4)
    assert stats["params_after"] == stats["params_before"]  # shapes unchanged: nothing shrinks
    weights = torch.cat([m.weight.flatten() for m in included_linears(model).values()])
    assert float((weights == 0).float().mean()) == pytest.approx(sparsity, abs=1e-4)
    assert torch.equal(model.get_input_embeddings().weight, emb)  # embeddings (and the tied head) untouched
    assert "lm_head" not in " ".join(included_linears(model))
    # global: one threshold for every matrix, so the kept weights are all larger than the pruned ones
    kept = weights[weights != 0].abs()
    assert float(kept.min()) >= stats["threshold"]


def test_structured_shrinks_marian_ffn_and_config():
    model = tiny_marian()
    imp = {name: torch.rand(32) for name, _m in model.named_modules() if hasattr(_m, "fc1")}
    stats = prune_structured(model, 0.25, importance=imp)
    assert stats["ffn_width_after"] == [24]
    assert model.config.encoder_ffn_dim == 24 and model.config.decoder_ffn_dim == 24
    for m in model.modules():
        if hasattr(m, "fc1"):
            assert m.fc1.weight.shape == (24, 16) and m.fc1.bias.shape == (24,) and m.fc2.weight.shape == (16, 24)
    out = model(input_ids=torch.tensor([[5, 6, 0]]), decoder_input_ids=torch.tensor([[63, 7]]))
    assert out.logits.shape == (1, 2, 64)


def test_structured_removes_the_least_important_neurons_and_keeps_the_function():
    """Neurons whose output column is zero contribute nothing: pruning exactly them changes no output."""
    model = tiny_llama()
    dead = [0, 3, 7, 11, 20, 21, 30, 39, 5, 9]  # 10 of 40 = 0.25
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, dead] = 0.0
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    before = model(input_ids=ids).logits
    imp = {}
    for name, m in model.named_modules():
        if hasattr(m, "down_proj"):
            imp[name] = m.down_proj.weight.norm(dim=0)  # weight-only importance: dead columns score 0
    prune_structured(model, 0.25, importance=imp)
    assert model.config.intermediate_size == 30
    assert model.model.layers[0].mlp.gate_proj.weight.shape == (30, 16)
    assert model.model.layers[0].mlp.down_proj.weight.shape == (16, 30)
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)


def test_structured_checkpoint_round_trips(tmp_path):
    from transformers import LlamaForCausalLM

    model = tiny_llama()
    imp = {n: torch.rand(40) for n, m in model.named_modules() if hasattr(m, "down_proj")}
    prune_structured(model, 0.5, importance=imp)
    model.save_pretrained(tmp_path)
    again = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("spec", ["unstructured:1.5", "structured:0", "magnitude:0.3", "structured", "0.5"])
def test_bad_spec_is_refused_with_the_accepted_forms(spec):
    with pytest.raises(ConfigError, match="unstructured:S"):
        apply_pruning(tiny_llama(), spec)


def test_none_changes_nothing_and_specs_are_canonical():
    model = tiny_llama()
    stats = apply_pruning(model, "none")
    assert stats["params_after"] == stats["params_before"] and stats["spec"] == "none"
    assert spec_str("structured:0.50") == "structured:0.5"


def test_unsupported_model_names_what_is_supported():
    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(PruningError, match="supported: Marian"):
        apply_pruning(Plain(), "unstructured:0.5")
    with pytest.raises(PruningError, match="supported: Marian"):
        prune_structured(Plain(), 0.5, importance={})
