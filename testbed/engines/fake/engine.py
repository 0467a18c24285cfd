"""A model-free engine: it "translates" by echoing the input's words, one token per word.

It has no weights and costs almost nothing per token, so it serves two purposes: unit tests of
everything around an engine (with a scripted clock), and the floor of each measurement path
(in-process, HTTP, UI) when the real engine is replaced by it.  Its tokenizer is a tiny
whitespace vocabulary that grows as it sees words.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from testbed.engines.base import ENCODER_DONE, Capabilities, Engine, Prepared
from testbed.registry import ModelInfo

EOS_ID = 0


class WordTokenizer:
    """Whitespace tokenizer: id 0 is EOS, new words get the next id."""

    eos_token_id = EOS_ID

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {"</s>": EOS_ID}
        self.words: list[str] = ["</s>"]

    def _id(self, word: str) -> int:
        if word not in self.vocab:
            self.vocab[word] = len(self.words)
            self.words.append(word)
        return self.vocab[word]

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [self._id(w) for w in text.split()] + [EOS_ID]}

    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> list[int]:
        return self(messages[-1].get("content") or "")["input_ids"]

    def decode(self, ids: list[int], skip_special_tokens: bool = True, **_: Any) -> str:
        return " ".join(self.words[i] for i in ids if not (skip_special_tokens and i == EOS_ID))


class FakeEngine(Engine):
    name = "fake"
    capabilities = Capabilities(devices=("cpu", "cuda"), precisions=("fp32", "bf16", "fp16", "int8"),
                                eos_control=True)

    def _resolve_model(self, model: str) -> ModelInfo:
        chat = "chat" in model or "smollm" in model
        return ModelInfo(
            name=f"fake:{model}", task="chat" if chat else "translation",
            architecture="causal" if chat else "seq2seq", source="fake engine (no model)",
        )

    def _load(self) -> None:
        self.tokenizer = WordTokenizer()
        self.eos_token_ids = frozenset({EOS_ID})
        self.model_max_input = 256

    def _echo(self, prepared: Prepared) -> list[int]:
        """The input's words, then EOS; while EOS is masked (``min_new_tokens``) the words repeat."""
        words = [i for i in prepared.input_ids if i != EOS_ID]
        if not words:  # nothing to echo (a chat whose last message is empty)
            return [EOS_ID]
        out: list[int] = []
        for k in range(prepared.max_new_tokens):
            if k >= len(words) and prepared.eos_allowed(k):
                out.append(EOS_ID)
                break
            out.append(words[k % len(words)])
        return out

    def _decode(self, prepared: Prepared) -> Generator[object, None, None]:
        if self.model_info.architecture == "seq2seq":
            yield ENCODER_DONE
        yield from self._echo(prepared)

    def _generate_batch(self, prepared: list[Prepared]) -> list[list[int]]:
        return [self._echo(p) for p in prepared]


class NullEngine(FakeEngine):
    """The floor of a measurement path: always emits exactly ``max_new_tokens`` tokens, no work.

    The tokens cycle through the input's words (so the text is readable and deterministic) and
    EOS is never produced, so every request costs the same number of tokens whatever its input:
    what remains of a measured latency is the path (scheduling, transport, parsing) alone.
    (So ``min_new_tokens`` / ``ignore_eos`` are honoured trivially: it always runs to the limit.)
    """

    name = "null"

    def _emit(self, prepared: Prepared) -> list[int]:
        words = [i for i in prepared.input_ids if i != EOS_ID] or [EOS_ID]
        n = prepared.max_new_tokens
        return (words * (n // len(words) + 1))[:n]

    def _decode(self, prepared: Prepared) -> Generator[object, None, None]:
        if self.model_info.architecture == "seq2seq":
            yield ENCODER_DONE
        yield from self._emit(prepared)

    def _generate_batch(self, prepared: list[Prepared]) -> list[list[int]]:
        return [self._emit(p) for p in prepared]
