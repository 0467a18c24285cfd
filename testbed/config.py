"""Frozen, validated configuration shared by the CLI, the library and the saved reports.

Validation is pure (no I/O, no environment writes): an unknown value raises
:class:`testbed.errors.ConfigError` naming the field, the value and what is allowed.  Whether an
engine supports a device/precision is the engine's declared :class:`Capabilities`, checked when
the engine is created (:func:`testbed.engines.registry.create_engine`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from testbed.errors import ConfigError

# int8-static: int8 with activation scales calibrated on the dev set (ONNX Runtime QDQ);
# int8-auto: dynamic int8 whose recipe (per-channel, reduced range, which MatMuls stay fp32) is searched
# on the dev set (ONNX Runtime, testbed.export.int8_auto); int8_float16: int8 weights with fp16
# activations (CTranslate2 on CUDA); fp8: float8 e4m3 weights and activations (torch-static on CUDA,
# torch._scaled_mm); int4-lossless: a checkpoint dequantised from GGUF 4/8-bit blocks with its weights
# packed back into them, fp32 arithmetic (ONNX Runtime MatMulNBits, testbed.export.lossless)
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8", "int8-static", "int8-auto", "int4-lossless",
                               "int8_float16", "fp8")
DEVICES = ("cpu", "cuda")
OVERFLOW_POLICIES = ("truncate", "refuse")
PRUNING_KINDS = ("unstructured", "structured")
PRUNING_HELP = (
    "none; unstructured:S (global magnitude pruning, fraction S of the Linear weights zeroed, 0<S<1); "
    "structured:F (fraction F of FFN neurons removed by importance, matrices shrink, 0<F<1)"
)


def parse_pruning(spec: str) -> tuple[str, float] | None:
    """``"none"`` -> None; ``"unstructured:0.5"`` -> ("unstructured", 0.5).  Bad specs raise ConfigError."""
    if spec == "none":
        return None
    kind, _, frac = str(spec).partition(":")
    try:
        f = float(frac)
    except ValueError:
        f = -1.0
    if kind not in PRUNING_KINDS or not 0.0 < f < 1.0:
        raise ConfigError("pruning", spec, PRUNING_HELP)
    return kind, f

DEFAULT_TRANSLATION_MODEL = "marian-en-de"
DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class EngineConfig:
    """One serving configuration: which model on which engine, at which precision, where.

    ``src_lang`` / ``tgt_lang``: source and target language codes for the multilingual families
    (mBART, M2M100, NLLB; checked against the tokenizer when the engine loads, and refused by
    families without languages).  ``threads=None`` keeps the runtime's default;
    ``max_input_tokens=None`` uses the model's own limit.  ``on_overflow`` decides what happens to
    an input longer than that limit:
    ``truncate`` (default: keep the first tokens and attach a visible warning to the result)
    or ``refuse`` (raise :class:`testbed.errors.InputError`).
    """

    model: str = DEFAULT_TRANSLATION_MODEL
    engine: str = "torch"
    precision: str = "fp32"
    device: str = "cpu"
    threads: int | None = None
    max_new_tokens: int = 128
    max_input_tokens: int | None = None
    on_overflow: str = "truncate"
    pruning: str = "none"
    src_lang: str | None = None
    tgt_lang: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model", self.model, "a registry name, a local directory or a hub id")
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", self.precision, ", ".join(PRECISIONS))
        if self.device not in DEVICES:
            raise ConfigError("device", self.device, ", ".join(DEVICES))
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError("threads", self.threads, "a positive integer, or unset for the runtime default")
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 4096:
            raise ConfigError("max_new_tokens", self.max_new_tokens, "an integer in [1, 4096]")
        if self.max_input_tokens is not None and (
            not isinstance(self.max_input_tokens, int) or self.max_input_tokens < 1
        ):
            raise ConfigError("max_input_tokens", self.max_input_tokens, "a positive integer or unset")
        if self.on_overflow not in OVERFLOW_POLICIES:
            raise ConfigError("on_overflow", self.on_overflow, ", ".join(OVERFLOW_POLICIES))
        parse_pruning(self.pruning)
        for name in ("src_lang", "tgt_lang"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip() or " " in value):
                raise ConfigError(name, value, "a language code of the model's tokenizer (e.g. de, de_DE, deu_Latn), "
                                  "or unset")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def label(self) -> str:
        threads = f"/t{self.threads}" if self.threads else ""
        pruned = f"/{self.pruning}" if self.pruning != "none" else ""
        return f"{self.engine}/{self.precision}{pruned}/{self.device}{threads}"
