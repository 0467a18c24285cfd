"""PyTorch eager engine: the reference every other engine is compared with.

Greedy decoding with a KV cache, written out as a plain loop (one forward per token) rather
than ``generate()``, so that each token id is available the moment it is chosen and the loop
costs no more than serving needs.  Precisions: fp32; bf16 (CPU and CUDA); fp16 (CUDA only);
int8 = dynamic int8 quantisation of every ``nn.Linear`` (CPU only).  A pruned model
(``EngineConfig.pruning``) is loaded from its cached pruned checkpoint (:mod:`testbed.prune`).

Decoding is :class:`testbed.engines.torch.batch.TorchBatch` (rows join and leave between steps). For
seq2seq models the encoder runs once per row (``encoder_done`` is stamped after it), and the decoder
reuses its cross-attention keys/values from the cache.  What decodes how (stop ids, the decoder
prefix: start token and forced target-language BOS, banned ids such as Marian's pad, input
limits) is the checkpoint's :class:`testbed.spec.DecodingSpec`, shared with the other engines.
"""

from __future__ import annotations

import inspect
from typing import Any

from testbed.engines.base import Capabilities, Engine, Prepared, StepBatch
from testbed.errors import ConfigError
from testbed.spec import load_spec


class TorchEngine(Engine):
    name = "torch"
    capabilities = Capabilities(
        devices=("cpu", "cuda"),
        precisions=("fp32", "bf16", "fp16", "int8"),
        streaming=True,
        batching="continuous",
        precision_devices={"fp16": ("cuda",), "int8": ("cpu",)},
        pruning=True,
        eos_control=True,
    )

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        cfg = self.config
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "device", "cuda", "cpu",
                f"CUDA was asked for but torch.cuda.is_available() is False (torch {torch.__version__}); "
                "use --device cpu, or install a CUDA build of torch on a machine with a GPU",
            )
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        from testbed.prune import checkpoint_dir

        path = checkpoint_dir(self.model_info, cfg.pruning)  # the source, or its pruned copy (cached)
        self.checkpoint_path = path
        self.spec, self.tokenizer = load_spec(path, cfg.src_lang, cfg.tgt_lang)
        spec = self.spec
        self.seq2seq = spec.seq2seq
        auto = AutoModelForSeq2SeqLM if spec.seq2seq else AutoModelForCausalLM
        model: Any = auto.from_pretrained(path, dtype=self._dtype())
        model.eval()
        model = self._quantize(model)
        self.device = torch.device(cfg.device)
        self.model: Any = model.to(self.device)
        self.eos_token_ids = spec.eos_token_ids
        self.pad_id = spec.pad_token_id
        self.banned = list(spec.banned_ids)
        # seq2seq: the decoder's first input (start token, then a forced target-language BOS)
        self.prefix = list(spec.decoder_prefix)
        self.model_max_input = spec.input_limit(cfg.max_new_tokens)
        self._torch = torch
        # transformers 5.x renamed the cache argument from past_key_values to cache
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._positions: Any = None  # per-row decoder positions (B, 1) while a batch step runs
        self._join_ok, self._join_refusal = True, ""
        if self.seq2seq:
            self._hook_positions(model)

    def _hook_positions(self, model: Any) -> None:
        """Give each row its own decoder position: Hugging Face derives one from the cache length, which
        is wrong for a row that joined a running batch.  Relative-position models (T5) need nothing."""
        import torch

        module = getattr(getattr(getattr(model, "model", None), "decoder", None), "embed_positions", None)
        if isinstance(module, torch.nn.Embedding):
            offset = int(getattr(module, "offset", 0))

            def hook(mod: Any, args: Any, out: Any) -> Any:
                if self._positions is None:
                    return out
                return torch.nn.functional.embedding(self._positions + offset, mod.weight)

            module.register_forward_hook(hook)
        elif getattr(model.config, "model_type", "") not in ("t5", "mt5", "umt5"):
            self._join_ok = False
            self._join_refusal = (f"the {model.config.model_type} decoder's positions cannot be set per row, so a "
                                  "row cannot join a running batch (use --batching static)")

    def _dtype(self) -> Any:
        """The dtype the checkpoint is loaded in (fp32 unless the precision is bf16 / fp16)."""
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision, torch.float32)

    def _quantize(self, model: Any) -> Any:
        """int8: dynamic int8 quantisation of every ``nn.Linear`` (CPU); other precisions unchanged."""
        if self.config.precision != "int8":
            return model
        import torch
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

    def _close(self) -> None:
        self.model = None
        if self.config.device == "cuda":
            self._torch.cuda.empty_cache()

    # ------------------------------------------------------------------ helpers
    def _pick(self, logits: Any, no_eos: list[int] | None = None) -> Any:
        """Greedy choice over the last position's logits (banned ids masked; EOS masked in rows ``no_eos``)."""
        if self.banned:
            logits[:, self.banned] = float("-inf")
        if no_eos:
            eos = sorted(self.eos_token_ids)
            for r in no_eos:
                logits[r, eos] = float("-inf")
        return logits.argmax(-1)

    def _pad(self, prepared: list[Prepared]) -> tuple[Any, Any]:
        """Input ids and attention mask: right padding for an encoder, left for a decoder-only model."""
        torch = self._torch
        lengths = [len(p.input_ids) for p in prepared]
        width = max(lengths)
        left = not self.seq2seq
        ids = torch.full((len(prepared), width), self.pad_id if self.pad_id is not None else 0, dtype=torch.long)
        mask = torch.zeros((len(prepared), width), dtype=torch.long)
        for i, p in enumerate(prepared):
            cols = slice(width - lengths[i], width) if left else slice(0, lengths[i])
            ids[i, cols] = torch.tensor(p.input_ids)
            mask[i, cols] = 1
        return ids.to(self.device), mask.to(self.device)

    def _sync(self) -> None:
        """Wait for the device: CUDA launches are asynchronous, so a timestamp taken right after a
        forward would mark the launch, not the end (the encoder pass's end is stamped after this)."""
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)

    def _open_batch(self) -> StepBatch:
        from testbed.engines.torch.batch import TorchBatch

        b = TorchBatch(self)
        if not self._join_ok:
            b.join_running = False
            b.join_refusal = self._join_refusal
        return b
