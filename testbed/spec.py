"""One description of how a checkpoint decodes: :class:`DecodingSpec`, built once per checkpoint.

Every engine (torch, ONNX Runtime, CTranslate2) and the ONNX exporter read the same object
instead of re-deriving the rules from ``config.json``, ``generation_config.json`` and the
tokenizer (what CTranslate2's ``ModelSpec`` does for its converters).  The rules, per family
(:data:`FAMILIES`, keyed by ``config.json``'s ``model_type``; NLLB is an M2M100 model with the
NLLB tokenizer):

* **stop ids** (``eos_token_ids``): the union of the config's, the generation config's and the
  tokenizer's EOS ids (Qwen2 chat models stop on ``<|im_end|>`` and ``<|endoftext|>``);
* **decoder start** (seq2seq): ``decoder_start_token_id`` of the generation config, else of the
  config, else the pad id (Marian and T5 start from ``<pad>``, BART / mBART / M2M100 / NLLB from
  ``</s>``, BlenderBot from ``<s>``);
* **forced BOS** (``forced_bos_token_id``): the target-language token of a multilingual model
  (mBART ``de_DE``, M2M100 ``__de__``, NLLB ``deu_Latn``), given with ``tgt_lang``; else the
  config's own (BART forces ``<s>``).  Engines feed it after the decoder start as part of the
  decoder prefix (:attr:`decoder_prefix`): it is not a generated token (METRICS.md: BOS is not
  counted), exactly as CTranslate2's ``target_prefix`` does;
* **banned ids**: single-token ``bad_words_ids`` of the (generation) config; and Marian's
  ``<pad>`` (its decoder start), which ``generate()`` never emits;
* **positions**: ``max_positions`` is the position table's size (learned or sinusoidal), None for
  T5's relative position bias; :meth:`input_limit` and :meth:`new_token_limit` keep a request
  inside it (GPT-2's 1024 ``n_positions`` included);
* **chat**: ``task`` is ``chat`` for decoder-only models and BlenderBot, ``translation`` for the
  other seq2seq families; ``chat_template`` says whether the tokenizer has one (a model without
  one takes raw text: GPT-2 completes a prompt, BlenderBot joins the turns with
  :attr:`turn_separator`);
* **languages**: ``src_lang`` / ``tgt_lang`` only for the families that take them
  (``languages`` lists the codes the tokenizer knows); a family without them refuses them.

An unknown ``model_type`` is refused naming the supported families.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str  # the testbed name of the family (README matrix, tests)
    architecture: str  # seq2seq | causal
    task: str  # translation | chat
    languages: bool = False  # takes --src-lang / --tgt-lang (target language forced as the first token)
    ban_start: bool = False  # the decoder start token is never emitted (Marian's <pad>)


# model_type (config.json) -> family
FAMILIES: dict[str, Family] = {
    "marian": Family("marian", "seq2seq", "translation", ban_start=True),
    "t5": Family("t5", "seq2seq", "translation"),
    "bart": Family("bart", "seq2seq", "translation"),
    "mbart": Family("mbart", "seq2seq", "translation", languages=True),
    "m2m_100": Family("m2m100", "seq2seq", "translation", languages=True),
    "blenderbot": Family("blenderbot", "seq2seq", "chat"),
    "blenderbot-small": Family("blenderbot-small", "seq2seq", "chat"),
    "llama": Family("llama", "causal", "chat"),
    "qwen2": Family("qwen2", "causal", "chat"),
    "gpt2": Family("gpt2", "causal", "chat"),
}
NLLB = Family("nllb", "seq2seq", "translation", languages=True)
# position table of T5-like models (relative bias) has no size: this is the input limit instead
RELATIVE_POSITIONS_LIMIT = 512
# BlenderBot's turns, joined as transformers' former Blenderbot chat template did
TURN_SEPARATOR = "  "
_LANG_CODE = re.compile(r"^(?:__[a-z]{2,3}(?:_[A-Za-z]+)?__|[a-z]{2,3}_[A-Z][a-z]{3}|[a-z]{2}_[A-Z]{2})$")


def supported() -> str:
    """The supported families, for error messages: ``marian (seq2seq), ...``."""
    names = [f"{f.name} ({f.architecture}, model_type {mt})" for mt, f in FAMILIES.items()]
    return ", ".join(names[:4] + [f"nllb ({NLLB.architecture}, model_type m2m_100 + NllbTokenizer)"] + names[4:])


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def family_of(config: dict[str, Any], tokenizer_class: str | None = None, where: str = "model") -> Family:
    """The family of a checkpoint from its ``config.json`` (and tokenizer class, for NLLB)."""
    mt = str(config.get("model_type", "?"))
    fam = FAMILIES.get(mt)
    if fam is None:
        raise ConfigError("model", f"{where} (model_type {mt})", supported(),
                          "testbed decodes these families; others are refused rather than run untested")
    if mt == "m2m_100" and (tokenizer_class or "").startswith("Nllb"):
        return NLLB
    return fam


def _ids(*sources: Any) -> set[int]:
    out: set[int] = set()
    for s in sources:
        if isinstance(s, bool):
            continue
        if isinstance(s, int):
            out.add(s)
        elif isinstance(s, (list, tuple)):
            out.update(int(x) for x in s if isinstance(x, int))
    return out


def _first(*values: Any) -> int | None:
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _languages(tok: Any) -> tuple[str, ...]:
    toks = set(getattr(tok, "additional_special_tokens", None) or [])
    toks.update(getattr(tok, "lang_code_to_token", {}).values() if hasattr(tok, "lang_code_to_token") else [])
    toks.update(str(t) for t in getattr(tok, "added_tokens_encoder", {}))
    codes = {t.strip("_") if t.startswith("__") else t for t in toks if _LANG_CODE.match(t)}
    return tuple(sorted(codes))


def _lang_token_id(tok: Any, lang: str) -> int | None:
    unk = getattr(tok, "unk_token_id", None)
    for cand in (lang, f"__{lang}__"):
        tid = tok.convert_tokens_to_ids(cand)
        if isinstance(tid, int) and tid != unk:
            return tid
    return None


@dataclass(frozen=True)
class DecodingSpec:
    """How a checkpoint decodes (see the module docstring).  Build with :func:`load_spec`."""

    family: str
    model_type: str
    architecture: str  # seq2seq | causal
    task: str  # translation | chat
    eos_token_ids: frozenset[int]
    pad_token_id: int | None
    decoder_start_token_id: int | None  # seq2seq only
    forced_bos_token_id: int | None
    banned_ids: tuple[int, ...]
    max_positions: int | None  # the position table's size; None: relative positions (T5)
    vocab_size: int
    chat_template: bool
    src_lang: str | None = None
    tgt_lang: str | None = None
    languages: tuple[str, ...] = ()
    input_max: int | None = None  # the tokenizer's model_max_length where it is smaller than the positions

    @property
    def seq2seq(self) -> bool:
        return self.architecture == "seq2seq"

    @property
    def decoder_prefix(self) -> tuple[int, ...]:
        """The decoder's first input tokens (seq2seq): the start token, then the forced BOS if any."""
        if not self.seq2seq or self.decoder_start_token_id is None:
            return ()
        forced = () if self.forced_bos_token_id is None else (self.forced_bos_token_id,)
        return (self.decoder_start_token_id, *forced)

    @property
    def turn_separator(self) -> str:
        return TURN_SEPARATOR

    def input_limit(self, max_new_tokens: int) -> int:
        """Most input tokens a request may have (before the overflow policy applies)."""
        if self.seq2seq:
            limit = self.max_positions or RELATIVE_POSITIONS_LIMIT
            return min(limit, self.input_max) if self.input_max else limit
        positions = self.max_positions or RELATIVE_POSITIONS_LIMIT
        # the prompt and the new tokens share the position table; at least a short prompt fits
        return max(min(16, positions // 2), positions - max_new_tokens)

    def new_token_limit(self, n_input: int) -> int | None:
        """Most tokens a request may generate given its input length (None: no limit)."""
        if self.max_positions is None:
            return None
        used = len(self.decoder_prefix) if self.seq2seq else n_input
        return max(1, self.max_positions - used)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["eos_token_ids"] = sorted(self.eos_token_ids)
        d["banned_ids"] = list(self.banned_ids)
        d["languages"] = list(self.languages)
        return d


def _check_languages(fam: Family, tok: Any, src_lang: str | None, tgt_lang: str | None,
                     languages: tuple[str, ...]) -> int | None:
    """Validate the language options; the forced target-language token id (None without tgt_lang)."""
    if not fam.languages:
        for name, value in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
            if value is not None:
                raise ConfigError(name, value, "unset", f"(the {fam.name} family has no language options; "
                                  "families that take them: mbart, m2m100, nllb)")
        return None
    shown = ", ".join(languages[:12]) + (f", ... ({len(languages)} in all)" if len(languages) > 12 else "")
    if tgt_lang is None:
        raise ConfigError("tgt_lang", None, shown or "a language code of the tokenizer",
                          f"(a {fam.name} model needs the target language: --tgt-lang)")
    if src_lang is not None and _lang_token_id(tok, src_lang) is None:
        raise ConfigError("src_lang", src_lang, shown, f"(not a language code of this {fam.name} tokenizer)")
    forced = _lang_token_id(tok, tgt_lang)
    if forced is None:
        raise ConfigError("tgt_lang", tgt_lang, shown, f"(not a language code of this {fam.name} tokenizer)")
    return forced


def load_tokenizer(path: Path, fam: Family, src_lang: str | None = None, tgt_lang: str | None = None) -> Any:
    from transformers import AutoTokenizer

    kw: dict[str, Any] = {}
    if fam.languages:
        kw = {k: v for k, v in (("src_lang", src_lang), ("tgt_lang", tgt_lang)) if v is not None}
    tok = AutoTokenizer.from_pretrained(path, **kw)
    if fam.languages and src_lang is not None and hasattr(tok, "src_lang"):
        tok.src_lang = src_lang  # some tokenizers only rebuild their special tokens on assignment
    return tok


def load_spec(path: Path, src_lang: str | None = None, tgt_lang: str | None = None, *,
              need_languages: bool = True) -> tuple[DecodingSpec, Any]:
    """The :class:`DecodingSpec` of the checkpoint in ``path`` and its tokenizer (set up for the languages).

    ``need_languages=False`` (the exporter: graphs do not depend on the language pair) accepts a
    multilingual checkpoint without ``tgt_lang``; its spec then has no forced target-language BOS.
    """
    path = Path(path)
    cfg = read_json(path / "config.json")
    gen = read_json(path / "generation_config.json")
    tok_cfg = read_json(path / "tokenizer_config.json")
    fam = family_of(cfg, tok_cfg.get("tokenizer_class"), str(path))
    tok = load_tokenizer(path, fam, src_lang, tgt_lang)
    languages = _languages(tok) if fam.languages else ()
    forced_lang = None
    if need_languages or src_lang is not None or tgt_lang is not None:
        forced_lang = _check_languages(fam, tok, src_lang, tgt_lang, languages)
    return build_spec(cfg, gen, tok, fam, src_lang, tgt_lang, languages, forced_lang), tok


def build_spec(cfg: dict[str, Any], gen: dict[str, Any], tok: Any, fam: Family, src_lang: str | None,
               tgt_lang: str | None, languages: tuple[str, ...], forced_lang: int | None) -> DecodingSpec:
    from transformers import AutoConfig

    hf = AutoConfig.for_model(**cfg)  # attribute maps: GPT-2's n_positions is max_position_embeddings
    eos = _ids(cfg.get("eos_token_id"), gen.get("eos_token_id"), getattr(tok, "eos_token_id", None))
    pad = _first(cfg.get("pad_token_id"), gen.get("pad_token_id"), getattr(tok, "pad_token_id", None))
    start = None
    if fam.architecture == "seq2seq":
        start = _first(gen.get("decoder_start_token_id"), cfg.get("decoder_start_token_id"), pad)
    banned = set()
    for seq in (gen.get("bad_words_ids") or cfg.get("bad_words_ids") or []):
        if isinstance(seq, list) and len(seq) == 1:
            banned.add(int(seq[0]))
    if fam.ban_start and start is not None:
        banned.add(start)
    forced = forced_lang if forced_lang is not None else _first(gen.get("forced_bos_token_id"),
                                                                cfg.get("forced_bos_token_id"))
    if fam.architecture == "causal":
        forced = None  # a decoder-only prompt carries its own BOS
    positions = None if fam.name == "t5" else _first(getattr(hf, "max_position_embeddings", None))
    tmax = getattr(tok, "model_max_length", None)
    input_max = int(tmax) if isinstance(tmax, int) and 0 < tmax < (positions or 10**9) and tmax < 10**6 else None
    return DecodingSpec(
        family=fam.name, model_type=str(cfg.get("model_type")), architecture=fam.architecture, task=fam.task,
        eos_token_ids=frozenset(eos), pad_token_id=pad, decoder_start_token_id=start,
        forced_bos_token_id=forced, banned_ids=tuple(sorted(banned)), max_positions=positions,
        vocab_size=int(cfg.get("vocab_size") or getattr(hf, "vocab_size", 0) or 0),
        chat_template=bool(getattr(tok, "chat_template", None)), src_lang=src_lang, tgt_lang=tgt_lang,
        languages=languages, input_max=input_max,
    )
