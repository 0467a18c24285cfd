"""Hugging Face model -> ONNX graphs with a KV cache, optimised/quantized, validated, cached.

One pipeline: load (fp32) -> export (legacy TorchScript exporter, opset 17) -> precision
(fp32 as exported; ``int8`` ORT dynamic quantization of the weight MatMuls; ``int8-static`` QDQ
with activation ranges calibrated on the committed *dev* set; ``int8-auto`` dynamic int8 with a
recipe searched on the dev set, :mod:`testbed.export.int8_auto`; ``int4-lossless`` the weights of a
checkpoint dequantised from GGUF blocks packed back into 4-bit blocks, computed in fp32,
:mod:`testbed.export.lossless`; ``fp16`` for GPU providers)
-> validate (greedy tokens and logits of ONNX Runtime against the torch fp32 model,
:mod:`testbed.export.validation`) -> save
with a manifest (:mod:`testbed.artifacts`).  Quantized and fp16 artefacts are built from the
cached fp32 artefact, so a model is traced once.

Why the TorchScript exporter: on this model family it gave a faster int8 graph than the dynamo
exporter (design notes, DATA.md), and its graphs are the ones ONNX Runtime's quantizer and
fusions are tuned for.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed.artifacts import build
from testbed.engines.onnxruntime.contract import CROSS, DECODER, ENCODER, LOGITS, META, PAST, PRESENT
from testbed.errors import ConfigError
from testbed.export.greedy_head import VERSION as GREEDY_HEAD_VERSION
from testbed.export.int8_auto import ENV as INT8_AUTO_ENV
from testbed.export.int8_auto import SearchSettings, parse_search, search_key
from testbed.export.int8_auto import search as auto_search
from testbed.export.lossless import BLOCK as BLOCK_SIZE
from testbed.export.lossless import VERSION as LOSSLESS_VERSION
from testbed.export.validation import VALIDATION_TEXTS, prompt_ids, validate, validate_if_possible
from testbed.registry import ModelInfo, content_hash, resolve_model, tokenizer_hash

EXPORTER_VERSION = 3
# per architecture: a change to one architecture's graphs re-exports only its artefacts
# (seq2seq 4: the decoder takes position_ids and self_bias, so rows join a running batch; causal 4:
# grouped-query attention without K/V copies, rotate_half as one Gather; 5: the same attention through
# the shared _attend / _merge_heads, the mask repeated once a step; 6: q/k/v in one MatMul, rotated
# before the split, the merged heads' shape from the inputs; seq2seq 5: the decoder step's q/k/v heads from one
# Reshape and one Split, its embeddings gathered from the (B, 1) ids)
GRAPH_VERSION = {"seq2seq": 5, "causal": 6}
OPSET = 17
PRECISIONS = ("fp32", "int8", "int8-static", "int8-auto", "int4-lossless", "fp16")
# model_type -> architecture and graph classes (module.Class under testbed.export): encoder, decoder
GRAPHS: dict[str, tuple[str, str | None, str]] = {
    "marian": ("seq2seq", "wrappers.MarianEncoderGraph", "wrappers.MarianDecoderGraph"),
    "t5": ("seq2seq", "seq2seq_graphs.T5EncoderGraph", "seq2seq_graphs.T5DecoderGraph"),
    **{mt: ("seq2seq", "seq2seq_graphs.BartLikeEncoderGraph", "seq2seq_graphs.BartLikeDecoderGraph")
       for mt in ("bart", "mbart", "m2m_100", "blenderbot", "blenderbot-small")},  # NLLB is m2m_100
    "llama": ("causal", None, "wrappers.LlamaDecoderGraph"),
    "qwen2": ("causal", None, "wrappers.LlamaDecoderGraph"),  # Llama's graph; the q/k/v biases live in the projections
    "gpt2": ("causal", None, "wrappers.GPT2DecoderGraph"),
}
SUPPORTED = {mt: g[0] for mt, g in GRAPHS.items()}
# int8 dynamic: per-tensor weight scales (per-channel is part of the cache key; not yet measured here)
INT8_PER_CHANNEL = False
CALIB_SENTENCES = {"seq2seq": 48, "causal": 8}
CALIB_STEPS = {"seq2seq": 64, "causal": 16}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".msgpack", ".h5")

Log = Callable[[str], None]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def tool_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def source_dir(info: ModelInfo, pruning: str = "none") -> Path:
    """The checkpoint to export: the model itself, or its pruned copy (testbed.prune)."""
    from testbed.prune import checkpoint_dir

    return Path(checkpoint_dir(info, pruning))


def model_type(src: Path) -> str:
    """The checkpoint's model_type, if the exporter has graphs for it (else ConfigError with the reason)."""
    from testbed.spec import family_of, read_json

    cfg = read_json(src / "config.json")
    fam = family_of(cfg, read_json(src / "tokenizer_config.json").get("tokenizer_class"), str(src))
    mt = str(cfg.get("model_type", "?"))
    if mt not in GRAPHS:
        raise ConfigError("model", f"{src} (family {fam.name}, model_type {mt})",
                          ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items()),
                          "the ONNX exporter has graphs for these model types")
    return mt


def graph_class(name: str) -> Any:
    """``module.Class`` of :data:`GRAPHS` -> the class (modules under ``testbed.export``)."""
    mod, cls = name.rsplit(".", 1)
    return getattr(importlib.import_module(f"testbed.export.{mod}"), cls)


def onnx_key(info: ModelInfo, src: Path, precision: str, pruning: str,
             auto: SearchSettings | None = None) -> dict[str, Any]:
    key: dict[str, Any] = {
        "format": "onnx", "model": info.name, "model_hash": content_hash(src), "tokenizer_hash": tokenizer_hash(src),
        "precision": precision,
        "pruning": pruning, "exporter_version": GRAPH_VERSION.get(info.architecture, EXPORTER_VERSION), "opset": OPSET,
        "tools": tool_versions(), "greedy_head": GREEDY_HEAD_VERSION,
    }
    if precision == "int8":
        key["per_channel"] = INT8_PER_CHANNEL
    if precision == "int8-static":
        key["calibration"] = {"dataset": "dev", "sentences": CALIB_SENTENCES, "steps": CALIB_STEPS, "method": "minmax"}
    if precision == "int8-auto":  # the search's settings and the CPU's int8 ISA (testbed.export.int8_auto)
        key["search"] = search_key(auto or SearchSettings())
    if precision == "int4-lossless":
        key["lossless"] = LOSSLESS_VERSION
    return key


def ensure_onnx(
    model: str | ModelInfo, precision: str = "fp32", pruning: str = "none", *, force: bool = False,
    root: Path | None = None, log: Log | None = None, int8_auto: SearchSettings | None = None,
) -> Path:
    """The artefact directory for (model, precision, pruning), built on first use and reused after.

    ``int8_auto``: the search settings of ``int8-auto`` (default: those of the ``TESTBED_INT8_AUTO``
    environment variable, ``name=value,...``, else :class:`SearchSettings`'s defaults).
    """
    if precision not in PRECISIONS:
        raise ConfigError("precision", precision, ", ".join(PRECISIONS), "(ONNX export)")
    info = resolve_model(model) if isinstance(model, str) else model
    src = source_dir(info, pruning)
    model_type(src)
    auto = (int8_auto or parse_search(os.environ.get(INT8_AUTO_ENV))) if precision == "int8-auto" else None
    key = onnx_key(info, src, precision, pruning, auto)
    say = log or _say

    def builder(out: Path) -> dict[str, Any]:
        if precision == "fp32":
            return _build_fp32(src, out, say)
        base = ensure_onnx(info, "fp32", pruning, root=root, log=log)
        if auto is not None:
            model = str(info.path) if info.path is not None else info.name
            return _build_from_fp32(base, src, precision, out, say,
                                    lambda o: auto_search(base, o, model, pruning, auto, say))
        return _build_from_fp32(base, src, precision, out, say)

    tag = f"{info.name}-{precision}" + (f"-{pruning.replace(':', '')}" if pruning != "none" else "")
    return build("onnx", tag, key, builder, force=force, root=root, log=say)


# --------------------------------------------------------------------------- fp32 export
def _load_torch(src: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    seq2seq = SUPPORTED[model_type(src)] == "seq2seq"
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    model = auto.from_pretrained(src, dtype=torch.float32)
    return model.eval()


def _meta(model: Any, src: Path) -> dict[str, Any]:
    """What the runner needs: the checkpoint's DecodingSpec (languages aside) and the graphs' cache shapes."""
    from testbed.spec import load_spec

    spec, _ = load_spec(src, need_languages=False)
    cfg = model.config
    meta: dict[str, Any] = {
        "architecture": spec.architecture, "model_type": spec.model_type, "family": spec.family,
        "eos_token_ids": sorted(spec.eos_token_ids), "pad_token_id": spec.pad_token_id,
        "max_positions": spec.max_positions, "vocab_size": int(cfg.vocab_size), "banned": list(spec.banned_ids),
    }
    if spec.seq2seq:
        from testbed.export.seq2seq_graphs import cache_dims

        layers, heads, dim = cache_dims(cfg)
        meta.update(num_layers=layers, kv_heads=heads, head_dim=dim, decoder_start_token_id=spec.decoder_start_token_id)
    else:
        heads = cfg.num_attention_heads
        meta.update(num_layers=cfg.num_hidden_layers, kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
                    head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    return meta


def _export(module: Any, args: tuple[Any, ...], path: Path, inputs: list[str], outputs: list[str],
            axes: dict[str, dict[int, str]]) -> None:
    import torch

    # eval() on the wrapper first: the exporter restores the wrapper's mode afterwards, and a
    # fresh nn.Module is in training mode, which would switch the shared sub-modules' dropout on
    module.eval()
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)


def _build_fp32(src: Path, out: Path, say: Log) -> dict[str, Any]:
    import torch

    say(f"exporting {src} to ONNX (fp32) ...")
    model = _load_torch(src)
    meta = _meta(model, src)
    n, h, d = meta["num_layers"], meta["kv_heads"], meta["head_dim"]
    kv = [f"{p}.{i}" for i in range(n) for p in ("k", "v")]
    past = [PAST + x for x in kv]
    present = [PRESENT + x for x in kv]
    cross = [CROSS + x for x in kv]
    b, t = 2, 3
    _, enc_graph, dec_graph = GRAPHS[meta["model_type"]]
    if meta["architecture"] == "seq2seq":
        assert enc_graph is not None
        s = 5
        ids = torch.randint(1, 100, (b, s))
        mask = torch.ones((b, s), dtype=torch.long)
        mask[1, -2:] = 0
        _export(graph_class(enc_graph)(model), (ids, mask), out / ENCODER, ["input_ids", "attention_mask"],
                ["encoder_bias", *cross],
                {"input_ids": {0: "batch", 1: "src"}, "attention_mask": {0: "batch", 1: "src"},
                 "encoder_bias": {0: "batch", 3: "src"},
                 **{c: {0: "batch", 3 if c.startswith(CROSS + "k") else 2: "src"} for c in cross}})
        enc_bias = torch.zeros((b, 1, 1, s))
        pasts = [torch.randn(b, h, t, d) for _ in past]
        crosses = [torch.randn(b, h, d, s) if c.startswith(CROSS + "k") else torch.randn(b, h, s, d) for c in cross]
        pos_ids = torch.full((b, 1), t, dtype=torch.long)
        self_bias = torch.zeros((b, 1, 1, t + 1))
        _export(graph_class(dec_graph)(model),
                (torch.randint(1, 100, (b, 1)), pos_ids, self_bias, enc_bias, *pasts, *crosses),
                out / DECODER, ["input_ids", "position_ids", "self_bias", "encoder_bias", *past, *cross],
                [LOGITS, *present],
                {"input_ids": {0: "batch"}, "position_ids": {0: "batch"}, "self_bias": {0: "batch", 3: "total"},
                 "encoder_bias": {0: "batch", 3: "src"}, LOGITS: {0: "batch"},
                 **{p: {0: "batch", 2: "past"} for p in past}, **{p: {0: "batch", 2: "total"} for p in present},
                 **{c: {0: "batch", 3 if c.startswith(CROSS + "k") else 2: "src"} for c in cross}})
    else:
        length = 4
        ids = torch.randint(1, 100, (b, length))
        mask = torch.ones((b, t + length), dtype=torch.long)
        pos = torch.arange(t, t + length).unsqueeze(0).expand(b, length).contiguous()
        pasts = [torch.randn(b, h, t, d) for _ in past]
        _export(graph_class(dec_graph)(model), (ids, mask, pos, *pasts), out / DECODER,
                ["input_ids", "attention_mask", "position_ids", *past], [LOGITS, *present],
                {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
                 "position_ids": {0: "batch", 1: "new"}, LOGITS: {0: "batch"},
                 **{p: {0: "batch", 2: "past"} for p in past}, **{p: {0: "batch", 2: "total"} for p in present}})
    # the greedy choice inside the decoder graph, before any quantization (testbed.export.greedy_head)
    from testbed.export.greedy_head import head_file

    meta["greedy_head"] = head_file(out / DECODER, meta["banned"], meta["eos_token_ids"], meta["vocab_size"])
    _write_side_files(src, out, {**meta, "precision": "fp32"})
    report = validate(out, src, model.eval(), strict=True)
    say(f"validated fp32 export: {report}")
    return {"source": str(src), "validation": report}


def _write_side_files(src: Path, out: Path, meta: dict[str, Any]) -> None:
    """Tokenizer and config files next to the graphs, and the decoding metadata the engine reads."""
    for f in src.iterdir():
        if f.is_file() and f.suffix not in _WEIGHT_SUFFIXES and f.suffix != ".md" and f.name != "manifest.json":
            shutil.copy2(f, out / f.name)
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")


# --------------------------------------------------------------------------- precisions
def _graphs(d: Path) -> list[str]:
    return [g for g in (ENCODER, DECODER) if (d / g).is_file()]


def _build_from_fp32(base: Path, src: Path, precision: str, out: Path, say: Log,
                     auto: Callable[[Path], dict[str, Any]] | None = None) -> dict[str, Any]:
    meta = json.loads((base / META).read_text())
    for f in base.iterdir():
        if f.is_file() and f.suffix != ".onnx" and f.name != "manifest.json":
            shutil.copy2(f, out / f.name)
    extra: dict[str, Any] = {"source": str(src), "built_from": str(base)}
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        for g in _graphs(base):
            say(f"int8 dynamic quantization of {g} (per_channel={INT8_PER_CHANNEL}) ...")
            quantize_dynamic(base / g, out / g, weight_type=QuantType.QInt8, per_channel=INT8_PER_CHANNEL,
                             op_types_to_quantize=["MatMul", "Gemm"], extra_options={"MatMulConstBOnly": True})
    elif precision == "int8-auto" and auto is not None:
        extra["int8_auto"] = auto(out)
    elif precision == "int8-static":
        extra["calibration"] = _quantize_static(base, out, meta, say)
    elif precision == "int4-lossless":
        extra["packed"] = _pack_lossless(base, out, say)
        if any(c["bounded_head"] for c in extra["packed"].values()):  # the runner decodes with it on the CPU
            meta["greedy_head"] = {**meta["greedy_head"], "bounded": True}
    elif precision == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        for g in _graphs(base):
            say(f"fp16 conversion of {g} ...")
            m = convert_float_to_float16(onnx.load(str(base / g)), keep_io_types=False)
            onnx.save(m, str(out / g))
    (out / META).write_text(json.dumps({**meta, "precision": precision}, indent=2) + "\n")
    if meta.get("greedy_head", {}).get("bounded"):
        extra["bounded_head"] = _check_bounded_head(base, src, out, meta, say)
        if not extra["bounded_head"]["kept"]:
            extra["packed"] = extra["bounded_head"].pop("packed")
    extra["quantized_matmuls"] = _count_ops(out)
    if precision == "fp16":
        extra["validation"] = validate_if_possible(out, src)
    else:  # int4-lossless computes the fp32 model's values: held to fp32's standard
        extra["validation"] = validate(out, src, _load_torch(src), strict=precision == "int4-lossless")
    say(f"{precision}: {extra['validation']}")
    return extra


def _check_bounded_head(base: Path, src: Path, out: Path, meta: dict[str, Any], say: Log) -> dict[str, Any]:
    """The bounded head's bound checked on this CPU over the validation texts' greedy steps (it rests
    on how ONNX Runtime quantizes activations at accuracy level 4); where it fails, the graphs are
    packed again without it, the plain head chooses over the fp32 logits, and the manifest says so."""
    import numpy as np
    from transformers import AutoTokenizer

    from testbed.export.lossless import trace_bounded_head

    tok = AutoTokenizer.from_pretrained(src)
    prompts = [prompt_ids(tok, t, meta["architecture"]) for t in VALIDATION_TEXTS]
    trace = trace_bounded_head(out, prompts, steps=20)
    report = {"steps": len(trace), "worst_error_to_bound": round(max(r["ratio"] for r in trace), 4),
              "median_candidates": int(np.median([r["candidates"] for r in trace])),
              "choices_agreeing": sum(r["agrees"] for r in trace), "kept": True}
    if report["worst_error_to_bound"] > 1:
        report["kept"] = False
        say(f"int4-lossless: the bounded head's bound failed on this CPU ({report}); packing without it")
        report["packed"] = _pack_lossless(base, out, say, bound_head=False)
        meta["greedy_head"] = {k: v for k, v in meta["greedy_head"].items() if k != "bounded"}
        (out / META).write_text(json.dumps({**meta, "precision": "int4-lossless"}, indent=2) + "\n")
    else:
        say(f"int4-lossless: the bounded head's bound holds on this CPU: {report}")
    return report


def _pack_lossless(base: Path, out: Path, say: Log, bound_head: bool = True) -> dict[str, dict[str, int]]:
    """``int4-lossless``: each graph's weight MatMuls on exact Q4_1 / Q8_0 blocks -> MatMulNBits."""
    import onnx

    from testbed.export.lossless import pack_graph

    info = {}
    for g in _graphs(base):
        m = onnx.load(str(base / g))
        info[g] = pack_graph(m, bound_head=bound_head)
        say(f"int4-lossless: {g}: {info[g]['q4']} MatMuls on Q4_1 blocks, {info[g]['q8']} on Q8_0 blocks, "
            f"{info[g]['float']} left in fp32 ({info[g]['nbits_nodes']} MatMulNBits nodes); "
            f"{info[g]['gather_q8']} embedding table(s) on Q8_0 blocks"
            + ("; the greedy head bounded (approximate logits, candidates in fp32)" if info[g]["bounded_head"] else ""))
        onnx.save(m, str(out / g))
    if not any(c["q4"] + c["q8"] for c in info.values()):
        raise ConfigError("precision", "int4-lossless",
                          "checkpoints whose weights were dequantised from GGUF Q4_1 / Q8_0 blocks (such as "
                          "smollm2-135m-instruct); use int8 or int8-auto for this model",
                          f"No weight MatMul of {base.name} lies exactly on 4-bit or 8-bit blocks of "
                          f"{BLOCK_SIZE} inputs")
    return info


def _count_ops(d: Path) -> dict[str, dict[str, int]]:
    import onnx

    out = {}
    for g in _graphs(d):
        m = onnx.load(str(d / g), load_external_data=False)
        counts: dict[str, int] = {}
        for node in m.graph.node:
            if node.op_type in ("MatMul", "MatMulInteger", "DynamicQuantizeMatMul", "QuantizeLinear",
                                "DequantizeLinear", "Gemm", "Cast", "MatMulNBits"):
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
        out[g] = counts
    return out


def _calibration_feeds(base: Path, meta: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Encoder/decoder input feeds recorded while the fp32 graphs translate dev sentences greedily."""
    import numpy as np
    from transformers import AutoTokenizer

    from testbed.datasets import load_dataset
    from testbed.engines.onnxruntime.runner import OrtModel, SessionSettings, pad_batch

    family = meta["architecture"]
    tok = AutoTokenizer.from_pretrained(base)
    texts = [ex.text or "" for ex in load_dataset("dev", limit=CALIB_SENTENCES[family])]
    m = OrtModel(base, SessionSettings())
    feeds: dict[str, list[dict[str, Any]]] = {ENCODER: [], DECODER: []}
    # record the decoder's numpy inputs by wrapping its step
    orig_step = m._step

    def host(v: Any) -> Any:  # numpy arrays on the plain-run() path, OrtValues with IO binding
        return v.numpy() if hasattr(v, "numpy") else np.asarray(v)

    def recording_step(fixed: dict[str, Any], inputs: dict[str, Any], past: Any, **kw: Any) -> Any:
        feed = {k: host(v) for k, v in fixed.items() if k != "input_ids"}
        feed.update({k: np.array(v) for k, v in inputs.items()})
        feed.update({n: host(p) for n, p in zip(m.past_names, past)})
        feeds[DECODER].append(feed)
        return orig_step(fixed, inputs, past, **kw)

    m._step = recording_step  # type: ignore[method-assign]
    steps, positions = CALIB_STEPS[family], meta.get("max_positions")
    if positions:  # stay inside the position table (a checkpoint's table may be shorter than a dev sentence)
        steps = min(steps, positions // 2 if family != "seq2seq" else positions - 1)
    for text in texts:
        ids = prompt_ids(tok, text, family)
        if positions:
            ids = ids[:positions] if family == "seq2seq" else ids[-(positions - steps):]
        a, mask = pad_batch([list(ids)], meta["pad_token_id"] or 0, left=family != "seq2seq")
        if family == "seq2seq":
            feeds[ENCODER].append({"input_ids": a, "attention_mask": mask})
        for i, nxt in enumerate(m.greedy(a, mask, steps, meta["banned"])):
            if isinstance(nxt, str):
                continue
            if int(nxt[0]) in meta["eos_token_ids"] or i > steps:
                break
    return feeds


def _quantize_static(base: Path, out: Path, meta: dict[str, Any], say: Log) -> dict[str, Any]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    say("int8-static: recording calibration inputs on the dev set ...")
    feeds = _calibration_feeds(base, meta)

    class Reader(CalibrationDataReader):
        def __init__(self, items: list[dict[str, Any]]) -> None:
            self.it = iter(items)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.it, None)

    import onnx

    info = {}
    for g in _graphs(base):
        # weight MatMuls only: activations x activations (attention scores) stay in float
        m = onnx.load(str(base / g))
        inits = {i.name for i in m.graph.initializer}
        weight_mm = [n.name for n in m.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]
        say(f"int8-static QDQ quantization of {g} on {len(feeds[g])} calibration feeds ...")
        quantize_static(
            str(base / g), str(out / g), Reader(feeds[g]), quant_format=QuantFormat.QDQ, per_channel=True,
            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, op_types_to_quantize=["MatMul", "Gemm"],
            calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=weight_mm,
            extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True, "ActivationSymmetric": False},
        )
        info[g] = len(feeds[g])
    return {"dataset": "dev", "feeds": info}
