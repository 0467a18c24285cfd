"""PyTorch eager engine: the reference every other engine is compared with.

Greedy decoding with a KV cache, written out as a plain loop (one forward per token) rather
than ``generate()``, so that each token id is available the moment it is chosen and the loop
costs no more than serving needs.  Precisions: fp32; bf16 (CPU and CUDA); fp16 (CUDA only);
int8 = dynamic int8 quantisation of every ``nn.Linear`` (CPU only).  A pruned model
(``EngineConfig.pruning``) is loaded from its cached pruned checkpoint (:mod:`testbed.prune`).

For seq2seq models the encoder runs once (then ``ENCODER_DONE`` is yielded), and the decoder
reuses its cross-attention keys/values from the cache.  What decodes how (stop ids, decoder
start and forced target-language BOS, banned ids such as Marian's pad, input limits) is the
checkpoint's :class:`testbed.spec.DecodingSpec`, shared with the other engines.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from typing import Any

from testbed.engines.base import ENCODER_DONE, Capabilities, Engine, Prepared
from testbed.errors import ConfigError
from testbed.spec import load_spec


class TorchEngine(Engine):
    name = "torch"
    capabilities = Capabilities(
        devices=("cpu", "cuda"),
        precisions=("fp32", "bf16", "fp16", "int8"),
        streaming=True,
        batching=True,
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
        auto = AutoModelForSeq2SeqLM if spec.seq2seq else AutoModelForCausalLM
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision, torch.float32)
        model: Any = auto.from_pretrained(path, dtype=dtype)
        model.eval()
        if cfg.precision == "int8":
            from torch.ao.quantization import quantize_dynamic

            model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.device = torch.device(cfg.device)
        self.model: Any = model.to(self.device)
        self.eos_token_ids = spec.eos_token_ids
        self.pad_id = spec.pad_token_id
        self.banned = list(spec.banned_ids)
        self.prefix = list(spec.decoder_prefix)
        self.seq2seq = spec.seq2seq
        self.model_max_input = spec.input_limit(cfg.max_new_tokens)
        self._torch = torch
        # transformers 5.x renamed the cache argument from past_key_values to cache
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

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

    # ------------------------------------------------------------------ decoding
    def _start(self, ids: Any, mask: Any) -> tuple[Callable[..., Any], Any]:
        """Begin greedy decoding of a (padded) batch: returns ``step`` and the first step input.

        For seq2seq the encoder runs here, once; for a decoder-only model the prompt is the
        first step's input (prefill).  ``step(inp, no_eos)`` runs one forward with the KV cache
        (updated in place) and returns the next token id of each row, EOS masked in the rows
        listed in ``no_eos`` (min_tokens / ignore_eos).  Call under inference mode.
        """
        from transformers import DynamicCache, EncoderDecoderCache

        torch = self._torch
        n = ids.shape[0]
        kw = self._cache_kw
        if self.seq2seq:
            enc = self.model.get_encoder()(input_ids=ids, attention_mask=mask)
            cache: Any = EncoderDecoderCache(DynamicCache(), DynamicCache())

            def seq2seq_step(inp: Any, no_eos: list[int] | None = None) -> Any:
                out = self.model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=inp,
                                 **{kw: cache}, use_cache=True)
                return self._pick(out.logits[:, -1, :].float(), no_eos)

            # the decoder prefix (start token, then a forced target-language BOS) is the first step's input
            return seq2seq_step, torch.tensor([self.prefix] * n, dtype=torch.long, device=self.device)

        cache = DynamicCache()
        state = {"mask": mask, "pos": (mask.cumsum(-1) - 1).clamp(min=0)}  # left padding aware
        one = torch.ones((n, 1), dtype=mask.dtype, device=self.device)

        def causal_step(inp: Any, no_eos: list[int] | None = None) -> Any:
            out = self.model(input_ids=inp, attention_mask=state["mask"], position_ids=state["pos"],
                             **{kw: cache}, use_cache=True, logits_to_keep=1)
            state["mask"] = torch.cat([state["mask"], one], dim=1)
            state["pos"] = state["pos"][:, -1:] + 1
            return self._pick(out.logits[:, -1, :].float(), no_eos)

        return causal_step, ids

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

    def _encoder_done(self) -> object:
        """``ENCODER_DONE``, once the encoder's kernels have finished: CUDA launches are
        asynchronous, so without a synchronise the timestamp would mark the launch, not the end."""
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)
        return ENCODER_DONE

    def _decode(self, prepared: Prepared) -> Generator[object, None, None]:
        torch = self._torch
        eos = self.eos_token_ids
        with torch.inference_mode():
            step, inp = self._start(*self._pad([prepared]))
        if self.seq2seq:
            yield self._encoder_done()
        for k in range(prepared.max_new_tokens):
            with torch.inference_mode():
                nxt = step(inp, None if prepared.eos_allowed(k) else [0])
            tid = int(nxt.item())
            yield tid
            if tid in eos:
                return
            inp = nxt.view(1, 1)

    def _generate_batch(self, prepared: list[Prepared]) -> list[list[int]]:
        outs: list[list[int]] = [[] for _ in prepared]
        for step in self._decode_batch(prepared):
            if step is not ENCODER_DONE:
                row_ids: list[int | None] = step  # type: ignore[assignment]
                for i, tid in enumerate(row_ids):
                    if tid is not None:
                        outs[i].append(tid)
        return outs

    def _decode_batch(self, prepared: list[Prepared]) -> Generator[object, None, None]:
        """Greedy decoding of a padded batch, one list per step (None for finished rows)."""
        n = len(prepared)
        limits = [p.max_new_tokens for p in prepared]
        outs: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        with self._torch.inference_mode():
            step, inp = self._start(*self._pad(prepared))
        if self.seq2seq:
            yield self._encoder_done()
        for _ in range(max(limits)):
            no_eos = [i for i, p in enumerate(prepared) if not done[i] and not p.eos_allowed(len(outs[i]))]
            with self._torch.inference_mode():
                nxt = step(inp, no_eos)
            picked = nxt.tolist()
            live = [not d for d in done]
            finished = self._collect(picked, outs, done, limits, self.eos_token_ids)
            yield [int(t) if ok else None for t, ok in zip(picked, live)]
            if finished:
                return
            inp = nxt.view(n, 1)

    @staticmethod
    def _collect(
        picked: list[int], outs: list[list[int]], done: list[bool], limits: list[int], eos: frozenset[int]
    ) -> bool:
        """Append each unfinished sequence's token; True when every sequence has finished."""
        for i, tid in enumerate(picked):
            if done[i]:
                continue
            outs[i].append(int(tid))
            if tid in eos or len(outs[i]) >= limits[i]:
                done[i] = True
        return all(done)
