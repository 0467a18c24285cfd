"""Static-shape torch engines for single-stream greedy decoding: ``torch-static`` and ``torch-compile``.

The eager torch engine (:mod:`testbed.engines.torch.engine`) grows a ``DynamicCache`` by one
position per token and calls the Hugging Face forward as is.  These engines decode one request
at a time with every decoding-step tensor at a fixed shape and address, which is what
``torch.compile`` and CUDA graphs need:

* a :class:`transformers.StaticCache` per shape (a :class:`Slot`): the self-attention cache holds
  ``L`` positions, ``L`` the bucket (:data:`BUCKETS`) of prefix/prompt + ``max_new_tokens``;
  seq2seq: the encoder output is copied into a buffer of ``S`` positions (the bucket of the
  source length, padding masked through the encoder attention mask), and the cross-attention
  keys/values sit in a second static cache of ``S`` positions;
* the step reads its inputs from the slot's buffers (token id, cache position), filled in place.

The first decoder call of a request (seq2seq: the decoder prefix, which also computes the
cross-attention keys/values; decoder-only: the prompt) runs eagerly; every later step is
:meth:`Slot.run`, which per ``step_mode`` and device is:

* ``torch-static`` on CPU: the step called eagerly (SDPA attention, the model's default);
* ``torch-static`` on CUDA: the step captured once per slot in a ``torch.cuda.CUDAGraph`` and
  replayed (capture is refused on CPU with a :class:`~testbed.errors.ConfigError`);
* ``torch-compile``: the step through ``torch.compile`` (CPU: inductor; CUDA: mode
  ``reduce-overhead``, i.e. inductor + CUDA graphs).  Compilation happens in :meth:`_load`
  (warm-up decodes of three synthetic sources, so that the dynamic-shape recompile is done before
  the first request) and counts in the load time, never in a request's latency.

Precisions: fp32, bf16, fp16 (CUDA), int8 and fp8 (CUDA): every eligible Linear replaced by
:mod:`testbed.engines.torch.qlinear` (per-channel weights, per-token dynamic activations;
``torch._int_mm`` / ``torch._scaled_mm``), the rest of the model in fp32 on CPU and bf16 on CUDA.
Batching is ``lockstep`` (no batched forward: these engines are the single-stream reference).
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

from testbed.engines.base import ENCODER_DONE, Capabilities, GenerationRequest, Prepared
from testbed.engines.torch.engine import TorchEngine
from testbed.errors import ConfigError

log = logging.getLogger(__name__)

BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
STEP_MODES = ("static", "compile")


def bucket(n: int) -> int:
    """The smallest bucket that holds ``n`` positions (n itself beyond the largest)."""
    return next((b for b in BUCKETS if b >= n), n)


class Slot:
    """One static shape: its caches, input buffers and (once made) its compiled step or CUDA graph."""

    def __init__(self, engine: TorchStaticEngine, length: int, src: int) -> None:
        from transformers import EncoderDecoderCache, StaticCache

        torch, dev = engine._torch, engine.device
        self.e = engine
        cfg = engine.model.config
        self.length, self.src = length, src
        self.cache: Any = StaticCache(config=cfg, max_cache_len=length)
        self.inp = torch.zeros((1, 1), dtype=torch.long, device=dev)
        self.pos = torch.zeros((1,), dtype=torch.long, device=dev)
        self.enc: Any = None
        self.enc_mask: Any = None
        if engine.seq2seq:
            self.cache = EncoderDecoderCache(self.cache, StaticCache(config=cfg, max_cache_len=src))
            self.enc = torch.zeros((1, src, cfg.d_model), dtype=engine.model.dtype, device=dev)
            self.enc_mask = torch.zeros((1, src), dtype=torch.long, device=dev)
        self.graph: Any = None
        self.out: Any = None
        self.busy = False  # a slot serves one decode at a time (a lockstep batch runs several in turn)

    def first(self, ids: Any) -> Any:
        """The request's first decoder call (eager): seq2seq, the prefix ``ids``; decoder-only, the prompt."""
        torch = self.e._torch
        self.cache.reset()
        pos = torch.arange(ids.shape[1], device=self.e.device)
        return self.e._call(ids, pos, self.enc, self.enc_mask, self.cache)

    def run(self, token: int, position: int) -> Any:
        """One decoding step for ``token`` at ``position``: the last position's logits, (1, vocab)."""
        self.inp.fill_(token)
        self.pos.fill_(position)
        e = self.e
        if e.config.device == "cuda" and e.step_mode == "static":
            if self.graph is None:
                self.capture()
            self.graph.replay()
            return self.out
        return e._step_fn(self.inp, self.pos, self.enc, self.enc_mask, self.cache)

    def capture(self) -> None:
        """Capture the step in a CUDA graph (after a side-stream warm-up, as torch's docs prescribe).  The
        warm-up calls write the same keys/values at the same position as the step they precede."""
        torch, e = self.e._torch, self.e
        if e.device.type != "cuda":
            raise ConfigError("device", e.device.type, "cuda",
                              "a CUDA graph can only be captured on a CUDA device; on CPU the step runs eagerly")
        side = torch.cuda.Stream(device=e.device)
        side.wait_stream(torch.cuda.current_stream(e.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                e._call(self.inp, self.pos, self.enc, self.enc_mask, self.cache)
        torch.cuda.current_stream(e.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.out = e._call(self.inp, self.pos, self.enc, self.enc_mask, self.cache)
        self.graph = graph


class TorchStaticEngine(TorchEngine):
    name = "torch-static"
    step_mode = "static"
    capabilities = Capabilities(
        devices=("cpu", "cuda"),
        precisions=("fp32", "bf16", "fp16", "int8", "fp8"),
        streaming=True,
        batching="lockstep",
        precision_devices={"fp16": ("cuda",), "fp8": ("cuda",)},
        pruning=True,
        eos_control=True,
    )

    def _load(self) -> None:
        super()._load()
        self._slots: dict[tuple[int, int], list[Slot]] = {}
        self._step_fn: Any = self._call
        self.compile_ns = 0
        if self.step_mode == "compile":
            # every engine in a process compiles the same code object (one dynamo cache entry per engine
            # and shape): past dynamo's limit (8) it would fall back to eager without saying so in a result
            dyn = self._torch._dynamo.config
            dyn.recompile_limit = max(dyn.recompile_limit, 64)
            # inductor's CPU kernels fix their OpenMP thread count when compiled: this engine's (set above)
            opts: dict[str, Any] = {"mode": "reduce-overhead"} if self.device.type == "cuda" else {}
            self._step_fn = self._torch.compile(self._call, **opts)
        if self.step_mode == "compile" or self.device.type == "cuda":
            self._warm()

    def _dtype(self) -> Any:
        """int8 / fp8 keep the non-quantized parts in fp32 on CPU and bf16 on CUDA."""
        if self.config.precision in ("int8", "fp8"):
            import torch

            return torch.bfloat16 if self.config.device == "cuda" else torch.float32
        return super()._dtype()

    def _quantize(self, model: Any) -> Any:
        if self.config.precision in ("int8", "fp8"):
            from testbed.engines.torch.qlinear import quantize_linears

            quantize_linears(model, self.config.precision)
        return model

    def _warm(self) -> None:
        """Compile / capture before the first request: decodes of three synthetic inputs whose slots differ
        (the third one meets the graph that dynamo recompiled with dynamic shapes).  Seq2seq: sources of
        three buckets; decoder-only: prompts whose prompt + max_new_tokens fill three buckets."""
        t0 = self.clock()
        unit = self.tokenizer("hello", add_special_tokens=False).input_ids or [0]
        m = self.config.max_new_tokens  # the slot's shape follows max_new_tokens: warm the one requests get
        b = bucket(m + 8)
        for n in (12, 28, 60) if self.seq2seq else (b - m, 2 * b - m, 4 * b - m):
            ids = (unit * n)[: n - 1] + [sorted(self.eos_token_ids)[0] if self.seq2seq else unit[0]]
            gen = self._decode(Prepared(GenerationRequest(text="(warm-up)"), ids, max_new_tokens=m, min_new_tokens=m))
            for i, _ in enumerate(gen):
                if i >= 3:
                    break
            gen.close()
        self.compile_ns = self.clock() - t0
        log.info("%s: %s step ready after %.1f s of warm-up", self.config.label(), self.step_mode,
                 self.compile_ns / 1e9)

    def _call(self, inp: Any, pos: Any, enc: Any, enc_mask: Any, cache: Any) -> Any:
        """The model's forward for ``inp`` at cache positions ``pos``: the last position's logits."""
        kw = {self._cache_kw: cache, "use_cache": True, "cache_position": pos}
        if self.seq2seq:
            from transformers.modeling_outputs import BaseModelOutput

            out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=enc), attention_mask=enc_mask,
                             decoder_input_ids=inp, **kw)
        else:
            out = self.model(input_ids=inp, logits_to_keep=1, **kw)
        return out.logits[:, -1, :]

    def _slot(self, length: int, src: int) -> Slot:
        """A free slot of this shape (a new one when every slot of it serves another decode); marked busy."""
        key = (bucket(length), bucket(src) if self.seq2seq else 0)
        slots = self._slots.setdefault(key, [])
        slot = next((s for s in slots if not s.busy), None)
        if slot is None:
            slot = Slot(self, *key)
            slots.append(slot)
        slot.busy = True
        return slot

    def _decode(self, prepared: Prepared) -> Generator[object, None, None]:
        slot: Slot | None = None
        try:
            for item in self._decode_in(prepared):
                if isinstance(item, Slot):
                    slot = item
                else:
                    yield item
        finally:
            if slot is not None:
                slot.busy = False

    def _decode_in(self, prepared: Prepared) -> Generator[object, None, None]:
        """:meth:`_decode`'s loop; it yields the slot it took first (released by the caller when it ends)."""
        torch = self._torch
        ids = torch.tensor([prepared.input_ids], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            if self.seq2seq:
                enc = self.model.get_encoder()(input_ids=ids).last_hidden_state
                self._sync()
                yield ENCODER_DONE
                k = len(self.prefix)
                slot = self._slot(k + prepared.max_new_tokens, ids.shape[1])
                slot.enc.zero_()
                slot.enc[:, : ids.shape[1]].copy_(enc)
                slot.enc_mask.zero_()
                slot.enc_mask[:, : ids.shape[1]] = 1
                yield slot
                logits = slot.first(torch.tensor([self.prefix], dtype=torch.long, device=self.device))
            else:
                k = ids.shape[1]
                slot = self._slot(k + prepared.max_new_tokens, 0)
                yield slot
                logits = slot.first(ids)
            n = 0
            while True:
                no_eos = [] if prepared.eos_allowed(n) else [0]
                tid = int(self._pick(logits.float().clone(), no_eos)[0])
                yield tid
                n += 1
                if tid in self.eos_token_ids or n >= prepared.max_new_tokens:
                    return
                logits = slot.run(tid, k + n - 1)


class TorchCompileEngine(TorchStaticEngine):
    name = "torch-compile"
    step_mode = "compile"
