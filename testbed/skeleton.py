"""A model's *skeleton*: the same architecture, vocabulary, tokenizer and decoding spec, almost no arithmetic.

The skeleton of a checkpoint keeps everything a decoding step touches that does not scale with
the model's width or depth (the vocabulary and so the size of the logits, the tokenizer, the
special tokens, the generation config, the number of runtime calls per step) and shrinks the rest:
one layer on each side, hidden size :data:`WIDTH`, one attention head, feed-forward :data:`WIDTH`.
Weights are random (seeded) and the output-embedding rows of the end-of-sequence tokens are zero,
so greedy decoding never stops early (every other logit's maximum is above 0): a request runs to
its ``max_new_tokens``.

``bench/engines.py`` runs each configuration (engine, precision, threads, options) on the skeleton
too: its TPOT there is the configuration's **measured per-step overhead** (the runtime call, the
binding, the vocabulary-sized logits and their copy / argmax, Python, the stream), and the real
model's TPOT minus it is the **compute** of the layers
(:func:`testbed.metrics.steps.split_tpot`).  What stays in the
overhead of a real step's arithmetic is the output projection at width :data:`WIDTH` (vocabulary x
16 multiply-adds, about 1 M for Marian's 58 k vocabulary) and one tiny layer.

Cached as an artefact (kind ``skeleton``) keyed by the checkpoint's content hash.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from testbed.registry import ModelInfo, content_hash

WIDTH = 16
SKELETON_VERSION = 2

# config attributes -> the skeleton's value (the families' names for width, depth, heads, FFN)
_SHRINK: dict[str, int] = {
    "d_model": WIDTH, "hidden_size": WIDTH, "n_embd": WIDTH,
    "encoder_layers": 1, "decoder_layers": 1, "num_hidden_layers": 1, "num_layers": 1,
    "num_decoder_layers": 1, "n_layer": 1,
    "encoder_attention_heads": 1, "decoder_attention_heads": 1, "num_attention_heads": 1,
    "num_key_value_heads": 1, "num_heads": 1, "n_head": 1,
    "encoder_ffn_dim": WIDTH, "decoder_ffn_dim": WIDTH, "intermediate_size": WIDTH, "d_ff": WIDTH,
    "d_kv": WIDTH, "head_dim": WIDTH, "n_inner": WIDTH,
}
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


def shrink_config(config: Any) -> list[str]:
    """Set ``config``'s width/depth/heads/FFN attributes to the skeleton's; returns the names set."""
    changed = []
    for name, value in _SHRINK.items():
        if getattr(config, name, None) is not None:
            setattr(config, name, value)
            changed.append(name)
    return changed


def silence_eos(model: Any, eos_ids: list[int]) -> None:
    """Zero the rows of ``eos_ids`` in every vocabulary x width matrix (the output projection and the
    embeddings it may be tied to, which ``save_pretrained`` keeps) and in any output bias: the EOS
    logit is 0 while the largest of the other random logits is above 0, so greedy decoding never ends."""
    import torch

    vocab = model.get_output_embeddings().weight.shape[0]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and p.shape[0] == vocab or name.endswith("lm_head.bias"):
                p[eos_ids] = 0.0
        bias = getattr(model, "final_logits_bias", None)
        if bias is not None:
            bias[..., eos_ids] = 0.0


def _write(src: Path, dest: Path, seq2seq: bool) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, GenerationConfig

    config = AutoConfig.from_pretrained(src)
    changed = shrink_config(config)
    torch.manual_seed(0)
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    model = cls.from_config(config)
    with torch.no_grad():  # a wider spread than the default init: clear argmax margins
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)
    eos: Any = None
    if (src / "generation_config.json").is_file():
        eos = GenerationConfig.from_pretrained(src).eos_token_id
    eos = eos if eos is not None else config.eos_token_id
    eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
    silence_eos(model, eos_ids)
    model.save_pretrained(dest)
    for f in src.iterdir():  # tokenizer, generation config, model card: everything but the weights
        if f.is_file() and not f.name.endswith(_WEIGHTS) and not (dest / f.name).exists():
            shutil.copy2(f, dest / f.name)
    return {"source_hash": content_hash(src), "shrunk": changed, "eos_silenced": eos_ids}


def skeleton_dir(info: ModelInfo) -> Path:
    """The skeleton checkpoint of ``info`` (built once into the artefact cache)."""
    import transformers

    from testbed.artifacts import build

    src = info.local_path()
    key = {"model_hash": content_hash(src), "width": WIDTH, "version": SKELETON_VERSION,
           "transformers": transformers.__version__}
    seq2seq = info.architecture == "seq2seq"
    return build("skeleton", info.name, key, lambda d: _write(src, d, seq2seq))

