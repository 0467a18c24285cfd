"""Pruning applied to a Hugging Face checkpoint *before* any engine sees it.

Two kinds, named by :data:`testbed.config.EngineConfig.pruning` (see
:func:`testbed.config.parse_pruning`):

* ``unstructured:S`` -- global magnitude pruning: one threshold over the absolute values of all
  *included* weights, the fraction ``S`` with the smallest magnitude is set to zero.  Included:
  the weight matrix of every ``nn.Linear`` inside the encoder/decoder layers (attention q/k/v/out
  and the FFN).  Excluded: embeddings, the output projection (``lm_head``, tied to the
  embeddings in both embedded models), biases and layer norms.  The matrices keep their shapes,
  so dense kernels do exactly the same work: this kind buys nothing in latency unless a runtime
  exploits sparsity (none used here does), which ``bench/pruning.py`` shows.
* ``structured:F`` -- a fraction ``F`` of the FFN neurons of every layer is removed, so the FFN
  matrices really shrink (Marian: ``fc1`` rows + bias and ``fc2`` columns; Llama: ``gate_proj``
  and ``up_proj`` rows and ``down_proj`` columns).  The same number of neurons is kept in every
  layer, so the config (``encoder_ffn_dim``/``decoder_ffn_dim`` for Marian, ``intermediate_size``
  for Llama) stays a valid description and every engine (torch, ONNX export, CTranslate2
  conversion) loads the saved checkpoint unchanged.  Attention heads are not pruned.

  Importance of neuron ``j`` of a layer (activation-based, data from the committed **dev** set,
  never the test set): ``mean_t |h_tj| * ||W_out[:, j]||_2``, where ``h`` is the input of the
  FFN's output projection (the activated hidden unit) over the tokens of the first
  :data:`CALIB_SENTENCES` dev sentences (Marian: source through the encoder, reference
  teacher-forced through the decoder; a causal model: the English source sentences as text).
  It estimates how much the neuron contributes to the layer's output; the lowest ones go.

:func:`apply_pruning` prunes a loaded model in place and returns statistics;
:func:`pruned_model_dir` materialises a pruned checkpoint in the artefact cache
(:func:`testbed.artifacts.build`, kind ``pruned``), keyed by the source model's content hash,
the spec, :data:`PRUNE_VERSION` and the transformers version; :func:`checkpoint_dir` is what an
engine calls to find the directory to load for its config.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from testbed.config import PRUNING_HELP, parse_pruning
from testbed.errors import ConfigError, TestbedError
from testbed.registry import ModelInfo, content_hash

# Bump when what a spec produces changes: older cached pruned checkpoints are then rebuilt.
PRUNE_VERSION = 1
# dev sentences used to measure FFN activations for structured importance
CALIB_SENTENCES = 64
SUPPORTED = "Marian (fc1/fc2 layers) and Llama-style (gate_proj/up_proj/down_proj MLP) models"
# files of a checkpoint that save_pretrained rewrites; everything else (tokenizer files) is copied
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
_REWRITTEN = ("config.json", "generation_config.json", "model.safetensors.index.json",
              "MODEL_CARD.md", "README.md", "training.json")  # the cards describe the unpruned model


class PruningError(TestbedError):
    """A model or spec that this pruner cannot handle."""


def _spec(spec: str | tuple[str, float] | None) -> tuple[str, float] | None:
    if spec is None or isinstance(spec, tuple):
        if spec is not None and (spec[0] not in ("unstructured", "structured") or not 0 < spec[1] < 1):
            raise ConfigError("pruning", spec, PRUNING_HELP)
        return spec
    return parse_pruning(spec)


def spec_str(spec: str | tuple[str, float] | None) -> str:
    """Canonical text of a spec (``"structured:0.25"``; ``"none"``)."""
    p = _spec(spec)
    return "none" if p is None else f"{p[0]}:{p[1]:g}"


# ---------------------------------------------------------------------- model structure
def _ffn_blocks(model: Any) -> list[tuple[str, Any, list[str], str]]:
    """(name, module, input projections, output projection) of every FFN in the model."""
    blocks = []
    for name, mod in model.named_modules():
        if hasattr(mod, "fc1") and hasattr(mod, "fc2"):  # Marian / BART-style layer
            blocks.append((name, mod, ["fc1"], "fc2"))
        elif all(hasattr(mod, a) for a in ("gate_proj", "up_proj", "down_proj")):  # Llama MLP
            blocks.append((name, mod, ["gate_proj", "up_proj"], "down_proj"))
    return blocks


def _kind_of(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("fc1", "fc2", "gate_proj", "up_proj", "down_proj"):
        return "ffn"
    if leaf in ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj"):
        return "attention"
    return "other"


def included_linears(model: Any) -> dict[str, Any]:
    """The ``nn.Linear`` modules whose weights unstructured pruning may zero (see module doc)."""
    import torch

    out = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        if name.rsplit(".", 1)[-1] == "lm_head" or ".layers." not in f".{name}":
            continue
        out[name] = mod
    return out


def _n_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))  # tied weights counted once


def _zero_stats(linears: dict[str, Any]) -> dict[str, Any]:
    kinds: dict[str, list[int]] = {}
    for name, mod in linears.items():
        k = kinds.setdefault(_kind_of(name), [0, 0])
        k[0] += int((mod.weight == 0).sum())
        k[1] += int(mod.weight.numel())
    zeros = sum(v[0] for v in kinds.values())
    total = sum(v[1] for v in kinds.values())
    return {
        "included_weights": total,
        "sparsity": zeros / total if total else 0.0,
        "per_kind": {k: {"weights": v[1], "sparsity": v[0] / v[1] if v[1] else 0.0} for k, v in sorted(kinds.items())},
    }


# ---------------------------------------------------------------------- unstructured
def _global_threshold(tensors: Iterable[Any], fraction: float) -> float:
    import torch

    flat = torch.cat([t.detach().abs().flatten().float() for t in tensors])
    k = max(1, round(fraction * flat.numel()))
    return float(torch.kthvalue(flat, k).values)


def prune_unstructured(model: Any, sparsity: float) -> dict[str, Any]:
    import torch

    linears = included_linears(model)
    if not linears:
        raise PruningError(f"no prunable Linear layers found in {type(model).__name__}; supported: {SUPPORTED}")
    thr = _global_threshold((m.weight for m in linears.values()), sparsity)
    need = round(sparsity * sum(m.weight.numel() for m in linears.values()))
    with torch.no_grad():
        below = 0
        for mod in linears.values():
            w = mod.weight
            w.masked_fill_(w.abs() < thr, 0.0)
            below += int((w == 0).sum())
        # weights equal to the threshold: zero just enough of them to reach the asked count
        for mod in linears.values():
            if below >= need:
                break
            w = mod.weight
            tie = (w.abs() == thr) & (w != 0)
            idx = tie.flatten().nonzero().flatten()[: need - below]
            w.view(-1)[idx] = 0.0
            below += int(idx.numel())
    return {"threshold": thr}


# ---------------------------------------------------------------------- structured
def _calibration_batches(model: Any, tokenizer: Any, n: int, batch: int = 16) -> list[dict[str, Any]]:
    """Padded batches of the first ``n`` dev sentences (never the test set)."""
    from testbed.datasets import load_dataset

    examples = load_dataset("dev", limit=n)
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    out = []
    for i in range(0, len(examples), batch):
        chunk = examples[i : i + batch]
        if seq2seq:
            enc = tokenizer([ex.text for ex in chunk], text_target=[ex.reference for ex in chunk],
                            return_tensors="pt", padding=True, truncation=True, max_length=256)
            labels = enc.pop("labels")
            pad = tokenizer.pad_token_id
            dec = labels.new_full(labels.shape, model.config.decoder_start_token_id)
            dec[:, 1:] = labels[:, :-1]
            dec_mask = (labels != pad).long()  # teacher-forced positions that predict a real token
            out.append({**enc, "decoder_input_ids": dec, "decoder_attention_mask": dec_mask})
        else:
            pad_side = tokenizer.padding_side
            tokenizer.padding_side = "right"
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            try:
                enc = tokenizer([ex.text for ex in chunk], return_tensors="pt", padding=True,
                                truncation=True, max_length=256)
            finally:
                tokenizer.padding_side = pad_side
            out.append(dict(enc))
    return out


def ffn_importance(model: Any, tokenizer: Any, n_sentences: int = CALIB_SENTENCES) -> dict[str, Any]:
    """Per FFN block: ``mean |h_j| * ||W_out[:, j]||`` over the calibration tokens (1-D tensors).

    Padding positions are excluded (the mask of the stack a block belongs to weights each token).
    """
    import torch

    blocks = _ffn_blocks(model)
    sums: dict[str, Any] = {}
    counts: dict[str, float] = {}
    masks: dict[str, Any] = {}
    hooks = []
    for name, mod, _ins, out_name in blocks:
        stack = "decoder" if "decoder" in name.split(".") else "encoder"

        def hook(_m: Any, args: tuple[Any, ...], name: str = name, stack: str = stack) -> None:
            h = args[0].detach().float().abs().reshape(-1, args[0].shape[-1])
            w = masks[stack].reshape(-1, 1).to(h)
            sums[name] = sums.get(name, 0) + (h * w).sum(0)
            counts[name] = counts.get(name, 0.0) + float(w.sum())

        hooks.append(getattr(mod, out_name).register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _calibration_batches(model, tokenizer, n_sentences):
                masks["encoder"] = batch["attention_mask"]
                masks["decoder"] = batch.get("decoder_attention_mask", batch["attention_mask"])
                model(**{k: v.to(model.device) for k, v in batch.items()})
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = {}
    for name, mod, _ins, out_name in blocks:
        w_norm = getattr(mod, out_name).weight.detach().float().norm(dim=0)
        out[name] = (sums[name] / max(1.0, counts[name])).cpu() * w_norm.cpu()
    return out


def _shrink(linear: Any, keep: Any, dim: int) -> Any:
    """A new Linear keeping the given output rows (dim 0) or input columns (dim 1)."""
    import torch

    w = linear.weight.detach().index_select(dim, keep.to(linear.weight.device))
    out_f, in_f = w.shape
    has_bias = linear.bias is not None
    new = torch.nn.Linear(in_f, out_f, bias=has_bias, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if has_bias:
            b = linear.bias.detach()
            new.bias.copy_(b.index_select(0, keep.to(b.device)) if dim == 0 else b)
    return new


def prune_structured(model: Any, fraction: float, tokenizer: Any = None,
                     importance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Remove ``fraction`` of every FFN's neurons (the same count per layer) and update the config."""
    import torch

    blocks = _ffn_blocks(model)
    if not blocks:
        raise PruningError(f"no FFN blocks found in {type(model).__name__}; supported: {SUPPORTED}")
    if importance is None:
        if tokenizer is None:
            raise PruningError("structured pruning needs the tokenizer (activation-based importance on dev)")
        importance = ffn_importance(model, tokenizer)
    widths = {getattr(mod, out).in_features for _n, mod, _i, out in blocks}
    cfg = model.config
    kept: dict[str, int] = {}
    for name, mod, ins, out in blocks:
        width = getattr(mod, out).in_features
        n_keep = max(1, round((1.0 - fraction) * width))
        keep = torch.topk(importance[name], n_keep).indices.sort().values
        for attr in ins:
            setattr(mod, attr, _shrink(getattr(mod, attr), keep, 0))
        setattr(mod, out, _shrink(getattr(mod, out), keep, 1))
        kept[name] = n_keep
        if hasattr(mod, "intermediate_size"):
            mod.intermediate_size = n_keep
    # config fields: one width per stack (every layer of a stack keeps the same count)
    for field, prefix in (("encoder_ffn_dim", "encoder"), ("decoder_ffn_dim", "decoder"), ("intermediate_size", "")):
        if not hasattr(cfg, field):
            continue
        widths_here = {v for k, v in kept.items() if prefix in k.split(".")}
        if not prefix:
            widths_here = set(kept.values())
        if widths_here:
            if len(widths_here) != 1:
                raise PruningError(f"layers of {field} ended with different widths {sorted(widths_here)}")
            setattr(cfg, field, widths_here.pop())
    return {"ffn_width_before": sorted(widths), "ffn_width_after": sorted(set(kept.values()))}


# ---------------------------------------------------------------------- public API
def apply_pruning(model: Any, spec: str | tuple[str, float] | None, tokenizer: Any = None) -> dict[str, Any]:
    """Prune ``model`` (a Hugging Face model, fp32 recommended) in place; return statistics.

    ``tokenizer`` is needed for ``structured`` (activation-based importance on the dev set).
    Statistics: ``params_before``/``params_after`` (all parameters, tied ones once),
    ``included_weights`` and ``sparsity`` (fraction of exact zeros in the included Linear weights,
    see :func:`included_linears`), ``per_kind`` (attention / ffn), and kind-specific fields.
    """
    parsed = _spec(spec)
    before = _n_params(model)
    stats: dict[str, Any] = {"spec": spec_str(parsed), "params_before": before,
                             "sparsity_before": _zero_stats(included_linears(model))["sparsity"]}
    extra: dict[str, Any] = {}
    if parsed is not None:
        kind, frac = parsed
        extra = prune_unstructured(model, frac) if kind == "unstructured" else prune_structured(model, frac, tokenizer)
    stats["params_after"] = _n_params(model)
    stats.update(_zero_stats(included_linears(model)))
    stats.update(extra)
    return stats


def _auto_class(info: ModelInfo) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if info.architecture == "seq2seq" else AutoModelForCausalLM


def pruned_model_dir(
    model_info: ModelInfo,
    spec: str | tuple[str, float] | None,
    *,
    force: bool = False,
    root: Path | None = None,
    finetune: Callable[[Any, Any], dict[str, Any]] | None = None,
    finetune_key: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The directory of ``model_info``'s checkpoint pruned by ``spec`` (built once, then reused).

    ``"none"`` returns the source checkpoint itself.  Otherwise the pruned checkpoint
    (``save_pretrained`` in the source's dtype, plus the source's tokenizer files, plus
    ``pruning.json`` with the statistics) lives in the artefact cache; the key holds the source's
    content hash, the canonical spec, :data:`PRUNE_VERSION`, the transformers version and, when
    given, ``finetune_key`` (``finetune(model, tokenizer)`` runs after pruning and returns stats).
    """
    parsed = _spec(spec)
    src = model_info.local_path()
    if parsed is None:
        return src
    import transformers

    from testbed import artifacts

    key = {"source": model_info.name, "model_hash": content_hash(src), "pruning": spec_str(parsed),
           "prune_version": PRUNE_VERSION, "calib_sentences": CALIB_SENTENCES,
           "transformers": transformers.__version__, "finetune": finetune_key}

    say = log or (lambda m: print(m, file=sys.stderr))

    def builder(tmp: Path) -> dict[str, Any]:
        import torch
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        say(f"pruning {model_info.name} ({spec_str(parsed)}) into the artefact cache ...")

        src_cfg = json.loads((src / "config.json").read_text())
        tok = AutoTokenizer.from_pretrained(src)
        model = _auto_class(model_info).from_pretrained(src, dtype=torch.float32)
        model.eval()
        stats = apply_pruning(model, parsed, tok)
        if finetune is not None:
            stats["finetune"] = finetune(model, tok)
            stats.update(_zero_stats(included_linears(model)))
        # keep the source's storage dtype (pruning only zeroes or drops weights: no rounding added)
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(str(src_cfg.get("dtype")
                                                                          or src_cfg.get("torch_dtype")))
        if dtype is not None and finetune is None:
            model = model.to(dtype)
        model.save_pretrained(tmp)
        for f in src.iterdir():
            if f.is_file() and f.suffix not in _WEIGHT_SUFFIXES and f.name not in _REWRITTEN \
                    and not f.name.startswith("."):
                shutil.copy2(f, tmp / f.name)
        stats["source_dir"] = str(src)
        (tmp / "pruning.json").write_text(json.dumps(stats, indent=2, default=str))
        return {"pruning_stats": stats}

    name = f"{model_info.name}-{spec_str(parsed).replace(':', '-')}"
    return artifacts.build("pruned", name, key, builder, force=force, root=root, log=log)


def checkpoint_dir(model_info: ModelInfo, pruning: str) -> Path:
    """The checkpoint an engine loads for ``EngineConfig.pruning``: the source, or its pruned copy."""
    return model_info.local_path() if _spec(pruning) is None else pruned_model_dir(model_info, pruning)


def pruning_stats(path: Path) -> dict[str, Any] | None:
    """The statistics saved beside a pruned checkpoint (None for an unpruned one)."""
    f = path / "pruning.json"
    return json.loads(f.read_text()) if f.is_file() else None
