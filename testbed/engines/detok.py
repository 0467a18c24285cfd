"""Token ids to text: the engines' decode, and the stream's incremental detokenisation.

Every engine turns ids into text as ``tokenizer.decode(ids, skip_special_tokens=True,
clean_up_tokenization_spaces=False)``.  For a Python (slow) Hugging Face tokenizer that call
spends most of its time in generic bookkeeping: on Marian, 7 us to decode 3 ids, of which
SentencePiece takes 1.5.  A stream decodes twice per token (:class:`Detokenizer`), so that
bookkeeping was part of every streamed token's time, for every engine alike: the harness, not the
engine.  :func:`text_decoder` returns a direct path for the tokenizers it knows (:data:`JOINS`:
Marian's and BlenderBot-small's; ids -> pieces by a table, special ids dropped, the tokenizer's own
join), checked at construction to give the tokenizer's own ``decode`` output on probe sequences
(every special and added id, and random ids); any other tokenizer, or one that fails the check,
keeps its own ``decode``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

Decode = Callable[[Sequence[int]], str]

PROBES = 64  # random probe sequences a direct path must decode as the tokenizer does


def hf_decoder(tokenizer: Any) -> Decode:
    """The tokenizer's own decode, as every engine calls it."""

    def decode(ids: Sequence[int]) -> str:
        return str(tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False))

    return decode


def text_decoder(tokenizer: Any) -> Decode:
    """``tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)``, by a direct path
    where one is known for this tokenizer and decodes the probes identically, else by the tokenizer."""
    slow = hf_decoder(tokenizer)
    fast = _direct(tokenizer, slow)
    if fast is None or not _same_on_probes(tokenizer, fast, slow):
        return slow
    return fast


def _marian_join(tok: Any) -> Callable[[list[str]], str]:
    """MarianTokenizer.convert_tokens_to_string without special tokens: SentencePiece (the source model unless
    the vocabularies are separate, as its ``_decode`` picks), '▁' as a space, stripped."""
    decode_pieces = (tok.spm_target if tok.separate_vocabs else tok.spm_source).decode_pieces
    return lambda pieces: str(decode_pieces(pieces)).replace("\u2581", " ").strip()


def _bpe_join(tok: Any) -> Callable[[list[str]], str]:
    """BlenderbotSmallTokenizer.convert_tokens_to_string: pieces joined by spaces, '@@ ' continuations glued."""
    return lambda pieces: " ".join(pieces).replace("@@ ", "").strip()


# Python tokenizers whose decode (special ids skipped, no clean-up) is their convert_tokens_to_string over the
# kept pieces: the embedded translation model's and the embedded dialogue model's
JOINS: dict[str, Callable[[Any], Callable[[list[str]], str]]] = {
    "MarianTokenizer": _marian_join,
    "BlenderbotSmallTokenizer": _bpe_join,
}


def _direct(tok: Any, slow: Decode) -> Decode | None:
    """ids -> pieces (special ids dropped, a table built once) -> the tokenizer's join; None for a tokenizer
    without a known join."""
    make = JOINS.get(type(tok).__name__)
    if make is None:
        return None
    try:
        join = make(tok)
        pieces = list(tok.convert_ids_to_tokens(list(range(len(tok)))))
        special = frozenset(int(i) for i in tok.all_special_ids)
    except (AttributeError, TypeError, ValueError):
        return None

    def decode(ids: Sequence[int]) -> str:
        try:
            kept = [pieces[i] for i in ids if i not in special]
        except (IndexError, TypeError):  # an id past the table (or not an int): the tokenizer says what it does
            return slow(ids)
        return join(kept)

    return decode


def _same_on_probes(tok: Any, fast: Decode, slow: Decode) -> bool:
    n = len(tok)
    marked = sorted({int(i) for i in getattr(tok, "all_special_ids", [])}
                    | {int(i) for i in getattr(tok, "added_tokens_decoder", {})})
    rng = random.Random(0)
    probes: list[list[int]] = [[i] for i in marked] + [marked]
    for _ in range(PROBES):
        seq = [rng.randrange(n) for _ in range(rng.randint(1, 12))]
        if marked and rng.random() < 0.5:
            seq.insert(rng.randrange(len(seq) + 1), rng.choice(marked))
        probes.append(seq)
    try:
        return all(fast(p) == slow(p) for p in probes)
    except Exception:  # noqa: BLE001 - a direct path that cannot decode a probe is not used
        return False


class Detokenizer:
    """Incremental detokenisation: the text piece each new token adds (vLLM's offsets method).

    Decoding a short window (not the whole sequence) keeps per-token cost flat; a piece that ends
    in an incomplete UTF-8 character (U+FFFD) is held back until the next token completes it.
    ``decode`` is the engine's (:func:`text_decoder`); by default the tokenizer's own.
    """

    def __init__(self, tokenizer: Any, decode: Decode | None = None) -> None:
        self._decode = decode or hf_decoder(tokenizer)
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return full[len(prefix) :]
        return ""
