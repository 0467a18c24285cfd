"""Pruned checkpoints of the embedded translation model: built once, cached, loaded by the torch engine."""

from __future__ import annotations

import json

import pytest

from testbed.config import EngineConfig
from testbed.datasets import load_dataset
from testbed.engines.registry import create_engine
from testbed.errors import ConfigError
from testbed.metrics.accuracy import score
from testbed.prune import pruned_model_dir, pruning_stats
from testbed.registry import resolve_model

pytestmark = pytest.mark.slow

DEMO = "Select the range of cells that you want to sort."
INFO = resolve_model("marian-en-de")


@pytest.fixture(scope="module")
def unstructured_dir():
    return pruned_model_dir(INFO, "unstructured:0.3")


@pytest.fixture(scope="module")
def structured_dir():
    return pruned_model_dir(INFO, "structured:0.25")


@pytest.fixture(scope="module")
def sentences():
    return load_dataset("test", limit=24)


def test_unstructured_reaches_the_sparsity_and_still_translates(unstructured_dir, sentences):
    stats = pruning_stats(unstructured_dir)
    assert stats["sparsity"] == pytest.approx(0.3, abs=1e-4)
    assert stats["params_after"] == stats["params_before"]
    # the saved (fp16, like the source) weights keep exactly the zeros
    from safetensors.torch import load_file

    w = load_file(str(unstructured_dir / "model.safetensors"))
    ffn = [t for k, t in w.items() if ".fc1.weight" in k or ".fc2.weight" in k]
    assert sum(int((t == 0).sum()) for t in ffn) / sum(t.numel() for t in ffn) > 0.2
    texts, refs = [ex.text for ex in sentences], [ex.reference for ex in sentences]
    dense = create_engine(EngineConfig(model="marian-en-de", threads=1))
    pruned = create_engine(EngineConfig(model="marian-en-de", pruning="unstructured:0.3", threads=1))
    assert pruned.describe()["model_hash"] != dense.describe()["model_hash"]
    assert "Zell" in pruned.stream(DEMO).run().text
    b_dense = score([g.text for g in dense.generate(texts)], refs)["bleu"]
    b_pruned = score([g.text for g in pruned.generate(texts)], refs)["bleu"]
    dense.close()
    pruned.close()
    # stated tolerance: 30 % global magnitude sparsity costs at most 3 BLEU on these 24 sentences
    assert b_pruned >= b_dense - 3.0, (b_pruned, b_dense)


def test_structured_really_shrinks_and_loads_in_torch(structured_dir):
    stats = pruning_stats(structured_dir)
    cfg = json.loads((structured_dir / "config.json").read_text())
    assert cfg["encoder_ffn_dim"] == cfg["decoder_ffn_dim"] == 768
    # 6 layers x 256 neurons x (256 in + 256 out + 1 bias) removed
    assert stats["params_before"] - stats["params_after"] == 6 * 256 * (256 + 256 + 1)
    eng = create_engine(EngineConfig(model="marian-en-de", pruning="structured:0.25", threads=1))
    n = sum(p.numel() for p in eng.model.parameters())
    assert n == stats["params_after"]
    s = eng.stream(DEMO).run()
    eng.close()
    assert s.finish_reason == "eos" and s.text.strip()


def test_pruned_dir_is_cached_and_reused(structured_dir, monkeypatch):
    import testbed.prune as P

    built_at = json.loads((structured_dir / "manifest.json").read_text())["built_at"]

    def boom(*a, **k):
        raise AssertionError("rebuilt although a valid cached checkpoint exists")

    monkeypatch.setattr(P, "apply_pruning", boom)
    again = pruned_model_dir(INFO, "structured:0.25")
    assert again == structured_dir
    assert json.loads((again / "manifest.json").read_text())["built_at"] == built_at
    assert pruned_model_dir(INFO, "none") == INFO.local_path()


def test_bad_spec_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="structured:F"):
        pruned_model_dir(INFO, "structured:2")
    with pytest.raises(ConfigError, match="pruning"):
        EngineConfig(pruning="heads:0.5")
