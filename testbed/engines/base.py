"""The engine interface: what every engine implements, and what it gets for free.

An engine implements these hooks and declares its :class:`Capabilities`:

* ``_load()``: load tokenizer and weights for ``self.config`` (``self.model_info`` says the task
  and architecture);
* ``_open_batch()``: its batched decoding, a :class:`~testbed.engines.step.StepBatch` (rows are
  admitted, prefilled, stepped and evicted; see :mod:`testbed.engines.step`).  This is the one way
  an engine decodes a batch, and, by default, a single request too (a one-row batch).  An engine
  that cannot batch declares ``capabilities.batching = "lockstep"`` and implements
  ``_decode(prepared)`` instead: a generator that yields ``ENCODER_DONE`` once (seq2seq, after the
  encoder pass) and then each token id as soon as it is chosen; its batches are its single decodes
  advanced in turn (:class:`~testbed.engines.step.LockstepBatch`).
* ``_generate_batch(prepared_list)`` (optional): a faster non-streaming batch, when the runtime
  has one (the default drives ``_open_batch`` to the end);
* ``_close()``: free resources.

An engine that runs a built artefact (exported graphs, a converted model) names its builder in
``artifact_builder`` (a key of :data:`testbed.artifacts.BUILDERS`) and calls :meth:`Engine._artifact`
in ``_load``: the pipeline builds it on first use and reuses it after.  Engines never import a
builder (the ONNX exporter, for one, uses the ONNX Runtime engine's runner to validate its graphs).

Everything else lives here, once: tokenisation and input-length policy (:meth:`Engine.prepare`),
incremental detokenisation, and the **only engine-side timestamps**
(:class:`~testbed.engines.stream.Stream` and :class:`~testbed.engines.stream.BatchStream`, via
``self.clock``, which is :func:`testbed.clock.now_ns` unless a test passes a scripted clock).
Callers ask ``engine.capabilities``; they never compare engine names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from testbed.clock import Clock, now_ns
from testbed.config import EngineConfig
from testbed.engines.detok import Detokenizer, text_decoder
from testbed.engines.step import LockstepBatch, StepBatch
from testbed.engines.stream import BatchStream, Stream
from testbed.engines.types import (
    ENCODER_DONE,
    Capabilities,
    Generation,
    GenerationRequest,
    Prepared,
    TokenEvent,
)
from testbed.errors import ConfigError, InputError
from testbed.registry import ModelInfo, content_hash, resolve_model
from testbed.spec import DecodingSpec

__all__ = [
    "ENCODER_DONE", "BatchStream", "Capabilities", "Detokenizer", "Engine", "Generation", "GenerationRequest",
    "Prepared", "StepBatch", "Stream", "TokenEvent",
]


class Engine(ABC):
    """Base class of every engine.  Subclasses set ``name`` and ``capabilities``."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    # the builder of the artefact it loads (testbed.artifacts.BUILDERS); None: it loads the checkpoint
    artifact_builder: ClassVar[str | None] = None

    def __init__(self, config: EngineConfig, clock: Clock = now_ns) -> None:
        self.capabilities.check(self.name, config)
        self.config = config
        self.clock = clock
        self.model_info: ModelInfo = self._resolve_model(config.model)
        if self.model_info.architecture not in self.capabilities.architectures:
            raise ConfigError(
                "model", config.model, f"architectures {', '.join(self.capabilities.architectures)}",
                f"(engine {self.name} does not run {self.model_info.architecture} models)",
            )
        self.tokenizer: Any = None
        self._text: Callable[[Sequence[int]], str] | None = None  # decode() for the tokenizer _text_of
        self._text_of: Any = None
        # how the checkpoint decodes (set by engines that load a real checkpoint; None for fake engines)
        self.spec: DecodingSpec | None = None
        self.eos_token_ids: frozenset[int] = frozenset()
        self.model_max_input: int = 512
        self.load_ns: int | None = None
        self._loaded = False

    # ----------------------------------------------------------------- lifecycle
    def load(self) -> Engine:
        if not self._loaded:
            t0 = self.clock()
            self._load()
            if self.tokenizer is not None:  # decode()'s tables are built here, not in the first request
                self._decoder()
            self.load_ns = self.clock() - t0
            self._loaded = True
        return self

    def _artifact(self) -> Path:
        """The artefact for (model, precision, pruning) from :attr:`artifact_builder`, built on first use."""
        from testbed import artifacts

        if self.artifact_builder is None:
            raise TypeError(f"engine {self.name} names no artefact builder (artifact_builder is None)")
        return artifacts.ensure(self.artifact_builder, self.model_info, self.config.precision, self.config.pruning)

    def close(self) -> None:
        if self._loaded:
            self._close()
            self._loaded = False

    def __enter__(self) -> Engine:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- requests
    @property
    def is_chat(self) -> bool:
        return self.model_info.task == "chat"

    def encode_input(self, request: GenerationRequest) -> list[int]:
        """Token ids of the request's input (chat template for chat models)."""
        if request.messages is not None:
            if not self.is_chat:
                raise InputError("chat messages were sent to a translation model; send text instead")
            msgs = list(request.messages)
            if not msgs or not any((m.get("content") or "").strip() for m in msgs):
                raise InputError("empty chat: at least one message with non-empty content is needed")
            if self.spec is not None and not self.spec.chat_template:
                return self._encode_untemplated(msgs)
            ids = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return [int(i) for i in ids]
        text = request.text
        if text is None or not text.strip():
            raise InputError("empty input: give a non-empty sentence or prompt")
        if self.is_chat and (self.spec is None or self.spec.chat_template):
            return self.encode_input(GenerationRequest(messages=({"role": "user", "content": text},)))
        return [int(i) for i in self.tokenizer(text)["input_ids"]]

    def _encode_untemplated(self, msgs: list[dict[str, str]]) -> list[int]:
        """Chat messages for a model whose tokenizer has no chat template.

        A seq2seq dialogue model (BlenderBot) reads the conversation as one text, its turns joined
        by the family's separator; a decoder-only model without a template (GPT-2) completes text
        and has no roles to map messages onto, so messages are refused.
        """
        assert self.spec is not None
        if not self.spec.seq2seq:
            raise InputError(f"this {self.spec.family} model has no chat template: send text (a prompt to "
                             "complete), not chat messages")
        turns = [(m.get("content") or "").strip() for m in msgs if m.get("role") != "system"]
        text = self.spec.turn_separator.join(turns)
        return [int(i) for i in self.tokenizer(text)["input_ids"]]

    def prepare(self, request: GenerationRequest) -> Prepared:
        self.load()
        ids = self.encode_input(request)
        limit = self.config.max_input_tokens or self.model_max_input
        warnings: tuple[str, ...] = ()
        n_orig = len(ids)
        if n_orig > limit:
            if self.config.on_overflow == "refuse":
                raise InputError(
                    f"input is {n_orig} tokens; this model accepts at most {limit} "
                    "(shorten it, or use on_overflow='truncate')"
                )
            # seq2seq: keep the head and the final EOS; decoder-only: keep the most recent tokens
            keep_tail = self.model_info.architecture == "seq2seq"
            ids = ids[: limit - 1] + ids[-1:] if keep_tail else ids[-limit:]
            warnings = (f"input truncated to {limit} of its {n_orig} tokens",)
        max_new = request.max_new_tokens or self.config.max_new_tokens
        if max_new < 1:
            raise InputError(f"max_new_tokens={max_new}: must be >= 1")
        spec = self.spec
        room = spec.new_token_limit(len(ids)) if spec is not None else None
        if spec is not None and room is not None and max_new > room:  # past the position table engines fail
            warnings += (f"max_new_tokens capped to {room}: the model has {spec.max_positions} positions",)
            max_new = room
        min_new = max_new if request.ignore_eos else request.min_new_tokens
        if request.ignore_eos or min_new:
            if not self.capabilities.eos_control:
                field_ = "ignore_eos" if request.ignore_eos else "min_new_tokens"
                raise InputError(f"{field_} is not honoured by engine {self.name}: it cannot mask EOS "
                                 "(capabilities.eos_control is false); leave it unset or use another engine")
            if not 0 <= min_new <= max_new:
                raise InputError(f"min_new_tokens={min_new}: must be in [0, max_new_tokens={max_new}]")
        return Prepared(request, ids, max_new, warnings, min_new)

    def stream(self, request: str | GenerationRequest | Sequence[dict[str, str]]) -> Stream:
        """Start one request; iterate the returned :class:`Stream` for timed token events."""
        return Stream(self, GenerationRequest.of(request), self.clock)

    def stream_batch(self, prepared: Sequence[Prepared], start_ns: Sequence[int] | None = None) -> BatchStream:
        """Decode already prepared requests as one batch; iterate for ``(row, TokenEvent)``.

        ``start_ns[i]`` is when row i's request arrived (its stream start), default now.
        """
        t = self.clock()
        rows = [Stream(self, p.request, self.clock, prepared=p, start_ns=start_ns[i] if start_ns else t)
                for i, p in enumerate(prepared)]
        return BatchStream(self, rows, self.clock)

    def generate(self, requests: Sequence[str | GenerationRequest]) -> list[Generation]:
        """Decode several requests as one batch (greedy; same output as :meth:`stream`)."""
        prepared = [self.prepare(GenerationRequest.of(r)) for r in requests]
        if not prepared:
            return []
        outs = self._generate_batch(prepared)
        gens = []
        for p, ids in zip(prepared, outs):
            reason = "eos" if ids and ids[-1] in self.eos_token_ids else "length"
            gens.append(Generation(list(ids), self.decode(ids), len(p.input_ids), reason, p.warnings))
        return gens

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``: the tokenizer's decode (special tokens skipped), by :func:`text_decoder`'s
        direct path where it has one for this tokenizer."""
        return self._decoder()(ids)

    def _decoder(self) -> Callable[[Sequence[int]], str]:
        """:func:`text_decoder` for the current tokenizer, built once per tokenizer."""
        if self._text is None or self._text_of is not self.tokenizer:
            self._text, self._text_of = text_decoder(self.tokenizer), self.tokenizer
        return self._text

    def describe(self) -> dict[str, Any]:
        """What a result row needs to reproduce this engine (the engine-side signature)."""
        info = self.model_info
        path = info.path if info.path is not None else (info.local_path() if self._loaded else None)
        path = getattr(self, "checkpoint_path", None) or path  # the weights actually loaded (pruned copy)
        return {
            "engine": self.name, **self.config.to_dict(), "model_name": info.name,
            "batch_decoding": self.capabilities.batching,
            "model_hash": content_hash(path) if path is not None and path.is_dir() else None,
            "model_source": info.source, "architecture": info.architecture,
        }

    # ----------------------------------------------------------------- engine hooks
    def _resolve_model(self, model: str) -> ModelInfo:
        return resolve_model(model)

    @abstractmethod
    def _load(self) -> None: ...

    def open_batch(self) -> StepBatch:
        """A new, empty :class:`~testbed.engines.step.StepBatch` for rows that decode together."""
        self.load()
        return self._open_batch()

    def _open_batch(self) -> StepBatch:
        """The engine's batched decoding (see :mod:`testbed.engines.step`).  Engines whose
        ``capabilities.batching`` is ``lockstep`` keep this default: their ``_decode`` generators,
        advanced in turn."""
        return LockstepBatch(self)

    def _decode(self, prepared: Prepared) -> Generator[object, None, None]:
        """One request on its own: a one-row :class:`StepBatch` (engines with a batched forward need
        no separate single-row loop).  Lockstep engines must implement it."""
        if self.capabilities.batching == "lockstep":
            raise NotImplementedError(f"engine {self.name} declares lockstep batching but has no _decode")
        b = self._open_batch()
        try:
            b.admit({0: prepared})
            if b.reports_encoder:
                yield ENCODER_DONE
            out = b.prefill()
            n = 0
            while 0 in out:
                tid = out[0]
                yield tid
                n += 1
                if tid in self.eos_token_ids or n >= prepared.max_new_tokens:
                    return
                out = b.step()
        finally:
            b.close()

    def _generate_batch(self, prepared: list[Prepared]) -> list[list[int]]:
        """Several requests decoded as one batch to the end (no timestamps needed)."""
        b = self._open_batch()
        outs: list[list[int]] = [[] for _ in prepared]
        live = set(range(len(prepared)))

        def take(out: dict[int, list[int]]) -> None:
            for i, tids in out.items():
                for tid in tids:
                    outs[i].append(tid)
                    if tid in self.eos_token_ids or len(outs[i]) >= prepared[i].max_new_tokens:
                        live.discard(i)
                        b.evict([i])
                        break

        try:
            b.admit(dict(enumerate(prepared)))
            take({i: [t] for i, t in b.prefill().items()})
            while live:
                out = b.steps()
                take(out)
                for i in live - out.keys():  # the engine stopped it without EOS (as in BatchStream.advance)
                    live.discard(i)
                    b.evict([i])
        finally:
            b.close()
        return outs

    def _close(self) -> None:
        return None
