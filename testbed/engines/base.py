"""The engine interface and the one streaming adapter that timestamps tokens.

An engine implements four hooks and declares its :class:`Capabilities`:

* ``_load()``: load tokenizer and weights for ``self.config`` (``self.model_info`` says the task
  and architecture);
* ``_decode(prepared)``: a generator that runs greedy decoding for one request and yields
  ``ENCODER_DONE`` once (seq2seq only, right after the encoder pass) and then each generated
  token id as soon as it is chosen, EOS included.  Closing the generator stops decoding;
* ``_generate_batch(prepared_list)``: the same decoding for several requests at once, returning
  the generated token ids of each (EOS included when produced);
* ``_decode_batch(prepared_list)`` (optional): step-wise batched decoding for a server's dynamic
  batches: yields ``ENCODER_DONE`` once (seq2seq), then per decoding step one list with an entry
  per row (the token id chosen, or ``None`` for a row that has finished).  The default runs the
  rows' ``_decode`` generators in lockstep (correct streaming, no batching speed-up);
* ``_close()``: free resources.

Everything else lives here, once: tokenisation and input-length policy (:meth:`prepare`),
incremental detokenisation, and the **only engine-side timestamps**
(:class:`Stream` and its batch counterpart :class:`BatchStream`,
via ``self.clock``, which is :func:`testbed.clock.now_ns` unless a test passes
a scripted clock).  Callers ask ``engine.capabilities``; they never compare engine names.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from testbed.clock import Clock, now_ns
from testbed.config import EngineConfig
from testbed.errors import ConfigError, InputError
from testbed.metrics.formulas import NO_TOKENS_ERROR
from testbed.metrics.records import RequestRecord
from testbed.registry import ModelInfo, content_hash, resolve_model
from testbed.spec import DecodingSpec

ENCODER_DONE = object()
"""Sentinel a seq2seq engine yields from ``_decode`` when its encoder pass has finished."""


@dataclass(frozen=True)
class Capabilities:
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    streaming: bool = True
    batching: bool = True
    architectures: tuple[str, ...] = ("seq2seq", "causal")
    # precisions that need a given device, e.g. {"fp16": ("cuda",)}
    precision_devices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # whether the engine can run a pruned model (EngineConfig.pruning other than "none")
    pruning: bool = False
    # whether decoding honours Prepared.min_new_tokens (EOS masked until then; ignore_eos masks it
    # to the end): the server refuses min_tokens / ignore_eos with a 400 on an engine without it
    eos_control: bool = False

    def check(self, engine: str, config: EngineConfig) -> None:
        if config.pruning != "none" and not self.pruning:
            raise ConfigError("pruning", config.pruning, "none", f"(engine {engine} does not run pruned models)")
        if config.device not in self.devices:
            raise ConfigError("device", config.device, ", ".join(self.devices), f"(engine {engine})")
        if config.precision not in self.precisions:
            raise ConfigError("precision", config.precision, ", ".join(self.precisions), f"(engine {engine})")
        need = self.precision_devices.get(config.precision)
        if need and config.device not in need:
            raise ConfigError(
                "precision", config.precision, f"on {config.device}: "
                + ", ".join(p for p in self.precisions if config.device in self.precision_devices.get(p, self.devices)),
                f"{config.precision} on engine {engine} needs device {' or '.join(need)}",
            )


@dataclass(frozen=True)
class GenerationRequest:
    """One request: ``text`` (a source sentence or a raw prompt) or chat ``messages``.

    Length control (vLLM's extensions, honoured by engines with ``capabilities.eos_control``):
    ``min_new_tokens`` masks EOS until that many tokens were generated; ``ignore_eos`` masks it
    to the end, so decoding runs to ``max_new_tokens``.
    """

    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    max_new_tokens: int | None = None
    request_id: str = ""
    min_new_tokens: int = 0
    ignore_eos: bool = False

    @classmethod
    def of(cls, x: str | GenerationRequest | Sequence[dict[str, str]], **kw: Any) -> GenerationRequest:
        if isinstance(x, GenerationRequest):
            return x
        if isinstance(x, str):
            return cls(text=x, **kw)
        return cls(messages=tuple(x), **kw)


@dataclass(frozen=True)
class Prepared:
    """A tokenised request, ready for ``_decode`` / ``_generate_batch``.

    ``min_new_tokens``: EOS may not be chosen while fewer tokens than this were generated
    (``ignore_eos`` sets it to ``max_new_tokens``); 0 for ordinary greedy decoding.
    """

    request: GenerationRequest
    input_ids: list[int]
    max_new_tokens: int
    warnings: tuple[str, ...] = ()
    min_new_tokens: int = 0

    def eos_allowed(self, generated: int) -> bool:
        """May EOS be chosen as the next token, with ``generated`` tokens already produced?"""
        return generated >= self.min_new_tokens


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    text: str
    t_ns: int


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    n_in: int
    finish_reason: str
    warnings: tuple[str, ...] = ()


class Detokenizer:
    """Incremental detokenisation: the text piece each new token adds (vLLM's offsets method).

    Decoding a short window (not the whole sequence) keeps per-token cost flat; a piece that ends
    in an incomplete UTF-8 character (U+FFFD) is held back until the next token completes it.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return full[len(prefix) :]
        return ""


class Stream:
    """The token stream of one request: iterate it for :class:`TokenEvent`; then read the totals.

    This is the one place where engine-side token times are taken.  ``start_ns`` is when the
    stream was created (before tokenisation), ``decode_start_ns`` when the engine started decoding
    it (after tokenisation and any queueing: the start of the encoder pass for seq2seq),
    ``encoder_done_ns`` when the encoder finished (seq2seq engines that report it), each event's
    ``t_ns`` when its token id was chosen, ``end_ns`` when decoding stopped.  :meth:`close` stops
    decoding early (finish_reason ``cancelled``).
    """

    def __init__(
        self, engine: Engine, request: GenerationRequest, clock: Clock, prepared: Prepared | None = None,
        start_ns: int | None = None,
    ) -> None:
        self._clock = clock
        self.start_ns = clock() if start_ns is None else start_ns
        self.request = request
        self.request_id = request.request_id or uuid.uuid4().hex[:12]
        self.engine = engine
        self.decode_start_ns: int | None = None
        self.encoder_done_ns: int | None = None
        self.end_ns: int | None = None
        self.events: list[TokenEvent] = []
        self.finish_reason: str | None = None
        self.error: str | None = None
        self._detok = Detokenizer(engine.tokenizer)
        self.prepared = engine.prepare(request) if prepared is None else prepared
        self._gen: Generator[object, None, None] | None = None  # created on first iteration

    @property
    def n_in(self) -> int:
        return len(self.prepared.input_ids)

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.prepared.warnings

    @property
    def token_ids(self) -> list[int]:
        return [e.token_id for e in self.events]

    @property
    def text(self) -> str:
        return self.engine.decode(self.token_ids)

    def _accept(self, tid: int, t: int) -> TokenEvent:
        """Record token ``tid`` chosen at ``t`` (shared by :meth:`__iter__` and :class:`BatchStream`)."""
        ev = TokenEvent(tid, self._detok.add(tid), t)
        self.events.append(ev)
        if tid in self.engine.eos_token_ids:
            self.finish_reason = "eos"
        return ev

    def __iter__(self) -> Iterator[TokenEvent]:
        if self._gen is None:
            self.decode_start_ns = self._clock()
            self._gen = self.engine._decode(self.prepared)
        try:
            for item in self._gen:
                t = self._clock()
                if item is ENCODER_DONE:
                    self.encoder_done_ns = t
                    continue
                yield self._accept(int(item), t)  # type: ignore[call-overload]
            if self.finish_reason is None:
                self.finish_reason = "length"
        except GeneratorExit:
            self.finish_reason = self.finish_reason or "cancelled"
            raise
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.finish_reason = "error"
            raise
        finally:
            self._gen.close()
            if self.end_ns is None:
                self.end_ns = self._clock()

    def close(self) -> None:
        """Stop decoding now (a consumer that goes away)."""
        if self._gen is not None:
            self._gen.close()
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
        if self.end_ns is None:
            self.end_ns = self._clock()

    def run(self) -> Stream:
        """Consume the whole stream; returns self for chaining."""
        for _ in self:
            pass
        return self

    def record(self, warmup: bool = False) -> RequestRecord:
        """The engine-side record: scheduled = sent = stream start; one chunk per token."""
        rec = RequestRecord(
            request_id=self.request_id, schedule_ns=self.start_ns, send_ns=self.start_ns,
            chunk_ns=[e.t_ns for e in self.events], chunk_tokens=[1] * len(self.events),
            done_ns=self.end_ns, n_in=self.n_in, n_out=len(self.events), warmup=warmup,
            decode_start_ns=self.decode_start_ns, encoder_done_ns=self.encoder_done_ns, output=self.text,
            finish_reason=self.finish_reason,
        )
        if self.warnings:
            rec.extra["warnings"] = list(self.warnings)
        if self.error is not None:
            rec.fail(self.error, self.end_ns)
        elif not self.events:
            rec.fail(NO_TOKENS_ERROR, self.end_ns)
        return rec


class BatchStream:
    """Several prepared requests decoded as one batch: the batch counterpart of :class:`Stream`.

    Each row is a :class:`Stream` (built from its :class:`Prepared`, never started on its own), so
    a row's :meth:`Stream.record`, text and finish reason work as for a single request.  Iterate
    the batch for ``(row, TokenEvent)`` pairs; the rows' token times are taken here, once per
    decoding step (every row's token of one step shares the step's timestamp, which is when its
    id was chosen).  A row finishes on EOS or at its ``max_new_tokens``; :meth:`cancel` drops a
    row (finish_reason ``cancelled``) and decoding stops as soon as no row is left.
    """

    def __init__(self, engine: Engine, rows: Sequence[Stream], clock: Clock) -> None:
        self.engine = engine
        self._clock = clock
        self.rows = list(rows)
        self.start_ns = clock()
        self.end_ns: int | None = None
        self.live = set(range(len(self.rows)))
        self._gen: Generator[object, None, None] | None = None

    def _finish(self, i: int, reason: str, t: int) -> None:
        row = self.rows[i]
        if row.finish_reason is None or reason == "error":
            row.finish_reason = reason
        if row.end_ns is None:
            row.end_ns = t
        self.live.discard(i)

    def __iter__(self) -> Iterator[tuple[int, TokenEvent]]:
        if self._gen is None:
            t0 = self._clock()
            for r in self.rows:
                r.decode_start_ns = t0
            self._gen = self.engine._decode_batch([r.prepared for r in self.rows])
        try:
            for step in self._gen:
                t = self._clock()
                if step is ENCODER_DONE:
                    for i in self.live:
                        self.rows[i].encoder_done_ns = t
                    continue
                items: list[Any] = step  # type: ignore[assignment]
                for i, item in enumerate(items):
                    if item is None or i not in self.live:
                        continue
                    row = self.rows[i]
                    yield i, row._accept(int(item), t)
                    if row.finish_reason == "eos":
                        self._finish(i, "eos", t)
                    elif len(row.events) >= row.prepared.max_new_tokens:
                        self._finish(i, "length", t)
                if not self.live:
                    break
            t = self._clock()
            for i in list(self.live):
                self._finish(i, "length", t)
        except GeneratorExit:
            raise
        except Exception as exc:
            t = self._clock()
            for i in list(self.live):
                self.rows[i].error = f"{type(exc).__name__}: {exc}"
                self._finish(i, "error", t)
            raise
        finally:
            self.close()

    def cancel(self, i: int) -> None:
        """The consumer of row ``i`` went away: stop reporting it (and decoding, once no row is left)."""
        if i in self.live:
            self._finish(i, "cancelled", self._clock())
        if not self.live:
            self.close()

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
        t = self._clock()
        for i in list(self.live):
            self._finish(i, "cancelled", t)
        if self.end_ns is None:
            self.end_ns = t


class Engine(ABC):
    """Base class of every engine.  Subclasses set ``name`` and ``capabilities``."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

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
            self.load_ns = self.clock() - t0
            self._loaded = True
        return self

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
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def describe(self) -> dict[str, Any]:
        """What a result row needs to reproduce this engine (the engine-side signature)."""
        info = self.model_info
        path = info.path if info.path is not None else (info.local_path() if self._loaded else None)
        path = getattr(self, "checkpoint_path", None) or path  # the weights actually loaded (pruned copy)
        return {
            "engine": self.name, **self.config.to_dict(), "model_name": info.name,
            "model_hash": content_hash(path) if path is not None and path.is_dir() else None,
            "model_source": info.source, "architecture": info.architecture,
        }

    # ----------------------------------------------------------------- engine hooks
    def _resolve_model(self, model: str) -> ModelInfo:
        return resolve_model(model)

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _decode(self, prepared: Prepared) -> Generator[object, None, None]: ...

    @abstractmethod
    def _generate_batch(self, prepared: list[Prepared]) -> list[list[int]]: ...

    def _decode_batch(self, prepared: list[Prepared]) -> Generator[object, None, None]:
        """Step-wise batched decoding (see the module docstring).  Default: the rows' ``_decode``
        generators in lockstep, one token of each per step (streams correctly; no speed-up).

        ``ENCODER_DONE`` is passed on once every row's encoder has run, and only if the rows'
        generators report it: an engine that does not report its encoder pass (CTranslate2) gets
        no encoder time here either.
        """
        gens: list[Generator[object, None, None] | None] = [self._decode(p) for p in prepared]

        def advance(i: int) -> object:
            g = gens[i]
            if g is None:
                return None
            try:
                return next(g)
            except StopIteration:
                gens[i] = None
                return None

        try:
            step = [advance(i) for i in range(len(gens))]  # every row's encoder pass (or its first token)
            if any(x is ENCODER_DONE for x in step):
                yield ENCODER_DONE
                step = [advance(i) if x is ENCODER_DONE else x for i, x in enumerate(step)]
            while any(x is not None for x in step):
                yield step
                step = [advance(i) for i in range(len(gens))]
        finally:
            for g in gens:
                if g is not None:
                    g.close()

    def _close(self) -> None:
        return None
