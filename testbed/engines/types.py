"""The plain types engines and their callers share: capabilities, requests, prepared inputs, events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from testbed.config import EngineConfig
from testbed.errors import ConfigError

ENCODER_DONE = object()
"""Sentinel a seq2seq engine yields from ``_decode`` when its encoder pass has finished."""


@dataclass(frozen=True)
class Capabilities:
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    streaming: bool = True
    # what the engine's batched decoding is (testbed.engines.step.BATCHING_KINDS): "continuous" (rows
    # join and leave between steps), "static" (one batched forward; rows cannot join a running batch),
    # "lockstep" (no batched forward: single-row decodes advanced in turn)
    batching: str = "lockstep"
    # why rows cannot join a running batch (batching "static"): the refusal a continuous request gets
    join_refusal: str = ""
    architectures: tuple[str, ...] = ("seq2seq", "causal")
    # precisions that need a given device, e.g. {"fp16": ("cuda",)}
    precision_devices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # whether the engine can run a pruned model (EngineConfig.pruning other than "none")
    pruning: bool = False
    # whether decoding honours Prepared.min_new_tokens (EOS masked until then; ignore_eos masks it
    # to the end): the server refuses min_tokens / ignore_eos with a 400 on an engine without it
    eos_control: bool = False

    @property
    def continuous(self) -> bool:
        return self.batching in ("continuous", "lockstep")

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
