"""CTranslate2 engine: the same checkpoint, converted once (cached), greedy decoding.

* Seq2seq models run as a :class:`ctranslate2.Translator`, decoder-only models as a
  :class:`ctranslate2.Generator`.  Precisions: fp32 and int8 on CPU; fp16, bf16 and int8_float16
  on CUDA (weights are quantized at conversion, so each precision is its own cached artefact).
* Threads: ``EngineConfig.threads`` is CTranslate2's ``intra_threads`` (``inter_threads`` is 1:
  one request decodes at a time, as in the other engines).
* Tokenisation is the torch engine's (:meth:`Engine.prepare` gives token ids); CTranslate2 takes
  token strings, so the ids are converted with the same tokenizer, and output ids are mapped back
  through the converted model's vocabulary.  Stop tokens, banned ids (Marian's ``<pad>``), the
  forced target-language BOS (a ``target_prefix``, left out of the result) and the input limit
  come from the checkpoint's :class:`testbed.spec.DecodingSpec`, shared with the other engines.
* Streaming uses CTranslate2's per-step callback on an asynchronous request (what
  ``generate_tokens`` does); each token id is yielded when its step result reaches this thread.
  A single request keeps this one-row call (:func:`stream_steps`: measured faster than a one-row
  :class:`~testbed.engines.ctranslate2.batch.CT2Batch`); batches are a ``CT2Batch`` (one call for
  all rows, static: rows cannot join a running call); ``generate`` is the non-streaming batch call.
  CTranslate2 does not expose the end of the encoder pass, so this engine **never yields
  ``ENCODER_DONE``**: records have no ``encoder_ms`` and the encoder time is inside TTFT.
* What streaming costs (``bench/ct2_overhead.py``, ``bench/results/ct2_overhead.md``): the
  non-streamed path (``generate``) is one synchronous ``translate_batch`` / ``generate_batch`` call
  with no callback, the call a user of CTranslate2 makes directly (and measured as fast).  A
  streamed request adds, per output token, CTranslate2's Python callback on its worker thread (the
  GIL taken once per step), the hand-off of the step to the consumer's thread (a thread wake-up:
  on a busy machine a scheduling delay, during which the GIL may be held) and the ``Stream``'s own
  per-token work (the timestamp, incremental detokenisation).  These are the price of delivering
  each token when it is computed; a caller that needs no token times should call ``generate``.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from testbed.engines.base import Capabilities, Engine, Prepared
from testbed.engines.ctranslate2.batch import JOIN_REFUSAL, CT2Batch
from testbed.engines.ctranslate2.convert import QUANTIZATION
from testbed.errors import ConfigError
from testbed.spec import load_spec

_GPU_ONLY = ("cuda",)


def stream_steps(process: Callable[..., Any], *args: Any, **kwargs: Any) -> Generator[Any, None, None]:
    """Step results of one asynchronous CTranslate2 request, as they are produced.

    Closing the iterator asks CTranslate2 to stop (the callback returns True) and waits for it.
    """
    steps: queue.Queue[Any] = queue.Queue()
    closed = threading.Event()
    done = object()

    def callback(step: Any) -> bool:
        steps.put(step)
        return closed.is_set()

    results = process(*args, asynchronous=True, beam_size=1, callback=callback, **kwargs)

    def wait() -> None:
        try:
            for r in results:
                r.result()
        except Exception as exc:  # surfaced in the consumer's thread
            steps.put(exc)
        steps.put(done)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    try:
        while True:
            item = steps.get()
            if item is done:
                break
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        closed.set()
        waiter.join()


class CTranslate2Engine(Engine):
    name = "ctranslate2"
    capabilities = Capabilities(
        devices=("cpu", "cuda"),
        precisions=("fp32", "int8", "fp16", "bf16", "int8_float16"),
        streaming=True,
        batching="static",
        join_refusal=JOIN_REFUSAL,
        precision_devices={"int8": ("cpu",), "fp16": _GPU_ONLY, "bf16": _GPU_ONLY, "int8_float16": _GPU_ONLY},
        pruning=True,
    )
    artifact_builder = "ctranslate2"  # testbed.engines.ctranslate2.convert.ct2_model_dir

    def _load(self) -> None:
        import ctranslate2

        from testbed.prune import checkpoint_dir

        cfg = self.config
        if cfg.device == "cuda" and ctranslate2.get_cuda_device_count() == 0:
            raise ConfigError(
                "device", "cuda", "cpu",
                f"CUDA was asked for but CTranslate2 {ctranslate2.__version__} sees no CUDA device; use --device cpu",
            )
        compute = QUANTIZATION[cfg.precision]
        supported = sorted(ctranslate2.get_supported_compute_types(cfg.device))
        if compute not in supported:
            ok = [p for p, c in QUANTIZATION.items() if c in supported]
            raise ConfigError("precision", cfg.precision, ", ".join(ok),
                              f"(CTranslate2 on this {cfg.device} supports compute types {', '.join(supported)})")
        self.checkpoint_path = checkpoint_dir(self.model_info, cfg.pruning)
        self.spec, self.tokenizer = load_spec(self.checkpoint_path, cfg.src_lang, cfg.tgt_lang)
        spec = self.spec
        self.ct2_path = self._artifact()  # converted on first use (testbed.artifacts.ensure)
        kw = {"device": cfg.device, "compute_type": compute, "inter_threads": 1, "intra_threads": cfg.threads or 0}
        self.seq2seq = spec.seq2seq
        self.model: Any = (ctranslate2.Translator if self.seq2seq else ctranslate2.Generator)(str(self.ct2_path), **kw)
        self.eos_token_ids = spec.eos_token_ids
        self.end_tokens = self.tokenizer.convert_ids_to_tokens(sorted(spec.eos_token_ids))
        self._vocab_ids = self._vocabulary_map(self.ct2_path)
        to_tokens = self.tokenizer.convert_ids_to_tokens
        self.suppress = [[to_tokens(b)] for b in spec.banned_ids] or None  # Marian's <pad>
        # the forced target-language BOS goes in as a target prefix (the decoder start is in the model)
        forced = spec.forced_bos_token_id
        self.target_prefix: list[str] | None = [to_tokens(forced)] if self.seq2seq and forced is not None else None
        self.model_max_input = spec.input_limit(cfg.max_new_tokens)

    def _vocabulary_map(self, path: Path) -> list[int] | None:
        """CTranslate2 target-vocabulary index -> tokenizer id (None when they are the same)."""
        for name in ("target_vocabulary.json", "shared_vocabulary.json", "vocabulary.json"):
            f = path / name
            if f.is_file():
                tokens = json.loads(f.read_text())
                break
        else:
            raise ConfigError("model", str(path), "a CTranslate2 model with a vocabulary file")
        ids = [int(i) if i is not None else -1 for i in self.tokenizer.convert_tokens_to_ids(tokens)]
        return None if ids == list(range(len(ids))) else ids

    def _close(self) -> None:
        self.model = None

    # ------------------------------------------------------------------ helpers
    def _hf_id(self, ct2_id: int) -> int:
        return ct2_id if self._vocab_ids is None else self._vocab_ids[ct2_id]

    def _tokens(self, p: Prepared) -> list[str]:
        return list(self.tokenizer.convert_ids_to_tokens(p.input_ids))

    def _options(self, max_new: int) -> dict[str, Any]:
        common: dict[str, Any] = {"end_token": self.end_tokens, "suppress_sequences": self.suppress}
        if self.seq2seq:
            # our prepare() already applied the input policy: no second truncation.  A target
            # prefix is not generated: the decoding length counts it, the result leaves it out
            n_prefix = len(self.target_prefix or ())
            return {**common, "max_decoding_length": max_new + n_prefix, "max_input_length": 0}
        return {**common, "max_length": max_new, "include_prompt_in_result": False}

    # ------------------------------------------------------------------ decoding
    def _open_batch(self) -> CT2Batch:
        return CT2Batch(self)

    def _decode(self, prepared: Prepared) -> Generator[object, None, None]:
        # no ENCODER_DONE: CTranslate2 does not report when its encoder pass ends
        process = self.model.translate_batch if self.seq2seq else self.model.generate_batch
        opts = self._options(prepared.max_new_tokens)
        if self.target_prefix:
            opts["target_prefix"] = [self.target_prefix]
        steps = stream_steps(process, [self._tokens(prepared)], **opts)
        skip = len(self.target_prefix or ()) if self.seq2seq else 0  # the prefix comes back as steps too
        try:
            for step in steps:
                if step.step < skip:
                    continue
                tid = self._hf_id(int(step.token_id))
                yield tid
                if tid in self.eos_token_ids:
                    return
        finally:
            steps.close()

    def _generate_batch(self, prepared: list[Prepared]) -> list[list[int]]:
        limits = [p.max_new_tokens for p in prepared]
        sources = [self._tokens(p) for p in prepared]
        opts = self._options(max(limits))
        outs: list[list[int]] = []
        if self.seq2seq:
            if self.target_prefix:
                opts["target_prefix"] = [self.target_prefix] * len(sources)
            results = self.model.translate_batch(sources, beam_size=1, return_end_token=True, **opts)
            ids_of = self.tokenizer.convert_tokens_to_ids
            skip = len(self.target_prefix or ())
            for r in results:
                outs.append([int(i) for i in ids_of(r.hypotheses[0])][skip:])
        else:
            results = self.model.generate_batch(sources, beam_size=1, return_end_token=True, **opts)
            for r in results:
                outs.append([self._hf_id(int(i)) for i in r.sequences_ids[0]])
        # one decoding length per call: a row with a smaller limit keeps its own first tokens
        return [o[:n] for o, n in zip(outs, limits)]
