"""ONNX Runtime engine: the exported graphs (KV cache, cross-attention K/V computed once) on CPU,
CUDA or TensorRT execution providers.

On load it builds or reuses the artefact for (model, precision, pruning) from the artefact cache
through the pipeline (:func:`testbed.artifacts.ensure`; its ``onnx`` builder is the exporter,
:mod:`testbed.export.onnx_export`, which this package never imports; the names both sides agree
on are in :mod:`testbed.engines.onnxruntime.contract`), then opens sessions with explicit
settings: ``intra_op_num_threads`` from ``EngineConfig.threads``, thread spinning off by default
(on a busy CPU, spinning threads steal the cores the work needs; ``spinning=True`` turns it on),
graph optimisation level ``all`` unless told otherwise.  A GPU provider that fails to load makes ONNX
Runtime fall back to the CPU silently: the engine checks ``session.get_providers()`` and refuses.

Precisions: ``fp32``; ``int8`` (ORT dynamic quantization, CPU); ``int8-static`` (QDQ, activation
ranges calibrated on the dev set, CPU); ``int8-auto`` (dynamic int8 with a recipe searched on the
dev set, :mod:`testbed.export.int8_auto`; the recipe is in :meth:`describe`); ``int4-lossless``
(a checkpoint dequantised from GGUF Q4_1 / Q8_0 blocks, its weights packed back into 4-bit blocks
and computed in fp32: the fp32 model's values, :mod:`testbed.export.lossless`, CPU); ``fp16`` (GPU
providers only).  Greedy decoding, the same as the torch engine: Marian's pad token (its decoder
start token) is never emitted.  Decoding is :class:`testbed.engines.onnxruntime.batch.OrtBatch`:
rows join and leave between steps; one seq2seq request on the plain CPU path (``generate()`` of one,
a stream of one) runs the same steps in :meth:`testbed.engines.onnxruntime.runner.OrtModel.decode_one`,
without the batch's bookkeeping (``bench/single_request.py``).
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any, ClassVar

from testbed.clock import Clock, now_ns
from testbed.config import EngineConfig
from testbed.engines.base import Capabilities, Engine, Prepared, StepBatch
from testbed.engines.onnxruntime.runner import FUSE_SKIP_LAYERNORM
from testbed.engines.types import ENCODER_DONE
from testbed.errors import ConfigError
from testbed.spec import load_spec


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"
    capabilities = Capabilities(
        devices=("cpu", "cuda"),
        precisions=("fp32", "int8", "int8-static", "int8-auto", "int4-lossless", "fp16"),
        streaming=True,
        batching="continuous",
        precision_devices={"fp16": ("cuda",), "int8": ("cpu",), "int8-static": ("cpu",), "int8-auto": ("cpu",),
                           "int4-lossless": ("cpu",)},
        pruning=True,
        eos_control=True,  # EOS masked per row (min_new_tokens / ignore_eos): in the graph's greedy head
    )
    gpu_provider: ClassVar[str] = "CUDAExecutionProvider"
    artifact_builder = "onnx"

    def __init__(self, config: EngineConfig, clock: Clock = now_ns, *, spinning: bool = False,
                 graph_opt: str = "all", io_binding: bool = False, greedy_in_graph: bool | None = None,
                 greedy_loop: bool = False, fuse_skip_layernorm: str | bool = "none") -> None:
        super().__init__(config, clock)
        # the greedy choice in the graph's head: on GPU providers by default (see SessionSettings)
        self.greedy_in_graph = config.device != "cpu" if greedy_in_graph is None else greedy_in_graph
        # generate(): the whole greedy loop in one run() call where it applies (CPU, seq2seq; see .loop)
        self.greedy_loop = greedy_loop
        # ONNX Runtime's SkipLayerNormalization fusion on the CPU: none (default) | decoder | all graphs (see
        # SessionSettings); True / False (as `--add .../fuse_skip_layernorm=true` gives it) mean all / none
        fuse = ("all" if fuse_skip_layernorm else "none") if isinstance(fuse_skip_layernorm, bool) \
            else fuse_skip_layernorm
        if fuse not in FUSE_SKIP_LAYERNORM:
            raise ConfigError("fuse_skip_layernorm", fuse_skip_layernorm, ", ".join(FUSE_SKIP_LAYERNORM))
        self.fuse_skip_layernorm: str = fuse
        self.spinning = spinning
        self.graph_opt = graph_opt
        self.io_binding = io_binding

    def _load(self) -> None:
        from transformers.utils import logging as hf_logging

        from testbed.engines.onnxruntime.runner import OrtModel, SessionSettings

        hf_logging.disable_progress_bar()
        cfg = self.config
        self.artifact = self._artifact()
        provider = "CPUExecutionProvider" if cfg.device == "cpu" else self.gpu_provider
        settings = SessionSettings(provider=provider, threads=cfg.threads, spinning=self.spinning,
                                   graph_opt=self.graph_opt, fp16=cfg.precision == "fp16",
                                   io_binding=self.io_binding, greedy_in_graph=self.greedy_in_graph,
                                   greedy_loop=self.greedy_loop, fuse_skip_layernorm=self.fuse_skip_layernorm)
        self.ort = OrtModel(self.artifact, settings)
        # the artefact holds the checkpoint's config, generation config and tokenizer
        self.spec, self.tokenizer = load_spec(self.artifact, cfg.src_lang, cfg.tgt_lang)
        spec = self.spec
        self.eos_token_ids = spec.eos_token_ids
        self.pad_id = spec.pad_token_id if spec.pad_token_id is not None else 0
        self.banned = list(spec.banned_ids)
        self.prefix = list(spec.decoder_prefix)
        self.model_max_input = spec.input_limit(cfg.max_new_tokens)

    def _close(self) -> None:
        self.ort = None  # type: ignore[assignment]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        ort = getattr(self, "ort", None)  # loaded: whether the loop applies to this artefact
        d.update(spinning=self.spinning, graph_opt=self.graph_opt, greedy_in_graph=self.greedy_in_graph,
                 greedy_loop=self.greedy_loop if ort is None else ort.loop is not None,
                 fuse_skip_layernorm=self.fuse_skip_layernorm,
                 io_binding=self.io_binding or cfg_gpu(self.config),
                 artifact=str(getattr(self, "artifact", "")) or None)
        if self.config.precision == "int8-auto" and getattr(self, "artifact", None):
            d["int8_recipe"] = int8_recipe(self.artifact)
        return d

    # ------------------------------------------------------------------ decoding
    def _lean(self, p: Prepared) -> bool:
        """Does one request decode in :meth:`OrtModel.decode_one` (the batch's steps on one row without its
        bookkeeping): a seq2seq artefact on the plain CPU path, no minimum length?"""
        return not p.min_new_tokens and self.ort.lean_fits()

    def _decode(self, prepared: Prepared) -> Generator[object, None, None]:
        if not self._lean(prepared):
            yield from super()._decode(prepared)
            return
        for item in self.ort.decode_one(prepared.input_ids, prepared.max_new_tokens, self.prefix, self.banned,
                                        self.eos_token_ids):
            yield ENCODER_DONE if isinstance(item, str) else item

    def _generate_batch(self, prepared: list[Prepared]) -> list[list[int]]:
        """One request where :meth:`_lean` holds decodes in :meth:`OrtModel.decode_one`; anything else as a batch."""
        p = prepared[0]
        if len(prepared) == 1 and self._lean(p):
            return [[t for t in self._decode(p) if isinstance(t, int)]]  # the tokens, not the encoder mark
        return super()._generate_batch(prepared)

    def _open_batch(self) -> StepBatch:
        from testbed.engines.onnxruntime.batch import OrtBatch

        return OrtBatch(self)


def int8_recipe(artifact: Path) -> dict[str, Any] | None:
    """The ``int8-auto`` recipe in the artefact's manifest (testbed.export.int8_auto) and the ISA it was chosen on."""
    import json

    auto = json.loads((artifact / "manifest.json").read_text()).get("int8_auto") or {}
    return {**auto["recipe"], "int8_isa": auto.get("int8_isa")} if "recipe" in auto else None


def cfg_gpu(config: EngineConfig) -> bool:
    return config.device != "cpu"


class OnnxRuntimeTensorRTEngine(OnnxRuntimeEngine):
    """The same graphs on the TensorRT execution provider (CUDA as the fallback for unsupported nodes)."""

    name = "onnxruntime-trt"
    capabilities = Capabilities(
        devices=("cuda",), precisions=("fp32", "fp16"), streaming=True, batching="continuous", pruning=True,
        eos_control=True,
    )
    gpu_provider = "TensorrtExecutionProvider"
