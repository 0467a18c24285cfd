"""The BlenderBot-small pieces of train_marian.py: vocabulary, tokenizer and model of the dialogue model.

The tokenizer is transformers' own ``BlenderbotSmallTokenizer`` (what ``AutoTokenizer`` loads for
``model_type`` blenderbot-small, and what testbed's spec / engines read): lower-cased words split
off ``.,!?()`` and apostrophes, a word-level BPE whose non-final pieces end in ``@@``, and the
special tokens ``__null__`` (pad, 0), ``__start__`` (decoder start, 1), ``__end__`` (EOS, 2),
``__unk__`` (3).  Its vocabulary and merges are trained here with the ``tokenizers`` BPE trainer
on the training pairs, pre-split exactly as the tokenizer splits text, so every merge it learns
is one the tokenizer can apply.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from transformers import BlenderbotSmallConfig, BlenderbotSmallForConditionalGeneration, BlenderbotSmallTokenizer

SPECIALS = ["__null__", "__start__", "__end__", "__unk__"]


def pre_split(text: str) -> list[str]:
    """Words as ``BlenderbotSmallTokenizer.bpe`` sees them (lower-cased, punctuation split off)."""
    out = []
    for token in re.findall(r"\S+\n?", text):
        token = re.sub("([.,!?()])", r" \1", token)
        token = re.sub("(')", r" \1 ", token)
        out += [t.lower() for t in re.sub(r"\s{2,}", " ", token).replace("\n", " __newln__").split(" ") if t]
    return out


def build_vocab(rows: list[tuple[str, str]], out: Path, size: int) -> None:
    """vocab.json + merges.txt of a word-level BPE with ``size`` entries (specials first)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    out.mkdir(parents=True, exist_ok=True)
    if (out / "vocab.json").exists():
        return
    t = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tr = trainers.BpeTrainer(vocab_size=size - len(SPECIALS), min_frequency=2, end_of_word_suffix="</w>",
                             show_progress=False)
    t.train_from_iterator((" ".join(pre_split(s)) for row in rows for s in row), tr)
    data = json.loads(t.to_str())["model"]
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for piece in sorted(data["vocab"], key=data["vocab"].get):
        vocab.setdefault(piece[:-4] if piece.endswith("</w>") else piece + "@@", len(vocab))
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["merges"]]
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def make_tokenizer(vocab_dir: Path) -> BlenderbotSmallTokenizer:
    # clean_up_tokenization_spaces: decode "i ' m fine ." as "i'm fine." (transformers' clean-up)
    return BlenderbotSmallTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"),
                                    model_max_length=256, clean_up_tokenization_spaces=True)


def make_model(tok: BlenderbotSmallTokenizer, args: Any) -> BlenderbotSmallForConditionalGeneration:
    cfg = BlenderbotSmallConfig(
        vocab_size=len(tok), d_model=args.d_model, encoder_layers=args.layers, decoder_layers=args.layers,
        encoder_attention_heads=args.heads, decoder_attention_heads=args.heads,
        encoder_ffn_dim=args.ffn, decoder_ffn_dim=args.ffn, max_position_embeddings=256,
        dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, activation_function="gelu",
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.bos_token_id, forced_eos_token_id=tok.eos_token_id,
        scale_embedding=True, tie_word_embeddings=True,
    )
    return BlenderbotSmallForConditionalGeneration(cfg)


def with_eos(ids: list[int], eos: int) -> list[int]:
    """The tokenizer adds no special tokens: a target must end with EOS for the model to learn to stop."""
    return ids if ids and ids[-1] == eos else ids + [eos]


class FastEncoder:
    """``tok(text)["input_ids"]`` for the training pairs, word ids cached (the tokenizer's Python
    path costs ~2 ms a text here; 200k texts would take minutes).  ``check`` compares it with the
    tokenizer on a sample and raises on any difference, so the shortcut cannot drift silently."""

    def __init__(self, tok: BlenderbotSmallTokenizer):
        self.tok = tok
        self.cache: dict[str, list[int]] = {}

    def word(self, w: str) -> list[int]:
        ids = self.cache.get(w)
        if ids is None:
            ids = self.cache[w] = self.tok.convert_tokens_to_ids(self.tok.bpe(w).split(" "))
        return ids

    def __call__(self, text: str, max_len: int) -> list[int]:
        out: list[int] = []
        for w in re.findall(r"\S+\n?", text):
            out += self.word(w)
        return out[:max_len]

    def check(self, texts: list[str], max_len: int) -> None:
        for t in texts:
            want = self.tok(t, truncation=True, max_length=max_len)["input_ids"]
            if self(t, max_len) != want:
                raise AssertionError(f"FastEncoder differs from the tokenizer on {t!r}")
