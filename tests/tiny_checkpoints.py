"""Tiny random-weight checkpoints of every supported family, built offline (no hub).

Each checkpoint is a real Hugging Face checkpoint (config, generation config, safetensors
weights, a tokenizer trained here on a few hundred lines of the committed en-de test set):
``build(family, root)`` writes it under ``root/<family>`` and returns the directory.  The weights
are random (seeded) with a larger initialisation than the families' defaults, so that greedy
argmax margins are wide and engines can be compared token for token at fp32
(:func:`greedy_margin` reports the smallest top-1 / top-2 gap a test met).

Tokenizers: a SentencePiece unigram model (Marian, T5, mBART, M2M100), a SentencePiece-style BPE
(NLLB), a byte-level BPE (BART, BlenderBot, GPT-2, Qwen2, Llama, as SmolLM2 uses) and a
word-level BPE with ``@@`` continuation marks (BlenderBot-small).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

FAMILIES = ("marian", "t5", "bart", "mbart", "m2m100", "nllb", "blenderbot", "blenderbot-small",
            "llama", "qwen2", "gpt2")
SEQ2SEQ = FAMILIES[:8]
SEED = 1234
VOCAB = 600
D = 32  # model width; 2 + 2 layers, 4 heads, FFN 64: well under 1 MB of weights per family
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@lru_cache(maxsize=1)
def corpus() -> tuple[str, ...]:
    from testbed.datasets import load_dataset

    exs = load_dataset("test", limit=300)
    return tuple([ex.text or "" for ex in exs] + [ex.reference or "" for ex in exs])


def _write_lines(root: Path) -> Path:
    f = root / "corpus.txt"
    if not f.is_file():
        f.write_text("\n".join(corpus()) + "\n")
    return f


def _spm(root: Path, name: str, **kw: Any) -> Path:
    import sentencepiece as spm

    prefix = root / name
    if not (root / f"{name}.model").is_file():
        spm.SentencePieceTrainer.train(input=str(_write_lines(root)), model_prefix=str(prefix), vocab_size=VOCAB,
                                       character_coverage=1.0, num_threads=1, minloglevel=2, **kw)
    return root / f"{name}.model"


def _spm_pieces(model: Path) -> list[tuple[str, float]]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())
            if not (sp.is_control(i) or sp.is_unknown(i))]


def _pairs(merges: list[Any]) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in merges]  # type: ignore[misc]


def _byte_bpe(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE with ``specials`` first (ids 0..), as GPT-2 / RoBERTa vocabularies are laid out."""
    from tokenizers import ByteLevelBPETokenizer

    t = ByteLevelBPETokenizer()
    t.train_from_iterator(corpus(), vocab_size=VOCAB, min_frequency=2, special_tokens=specials, show_progress=False)
    data = json.loads(t.to_str())["model"]
    return dict(data["vocab"]), _pairs(data["merges"])


def _sp_bpe(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import SentencePieceBPETokenizer

    t = SentencePieceBPETokenizer()
    t.train_from_iterator(corpus(), vocab_size=VOCAB, min_frequency=2, special_tokens=specials, show_progress=False)
    data = json.loads(t.to_str())["model"]
    return dict(data["vocab"]), _pairs(data["merges"])


def _word_bpe(specials: list[str]) -> tuple[dict[str, int], list[str]]:
    """BlenderBot-small's BPE: lower-cased words, ``@@`` marks a piece that continues the word."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tr = trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2, end_of_word_suffix="</w>", show_progress=False)
    t.train_from_iterator([line.lower() for line in corpus()], tr)
    data = json.loads(t.to_str())["model"]
    vocab = {s: i for i, s in enumerate(specials)}
    for tok in sorted(data["vocab"], key=data["vocab"].get):
        piece = tok[:-4] if tok.endswith("</w>") else tok + "@@"
        vocab.setdefault(piece, len(vocab))
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["merges"]]
    return vocab, merges


# --------------------------------------------------------------------------- tokenizers
def _tokenizer(family: str, out: Path, work: Path) -> Any:
    from transformers import (
        BartTokenizer,
        BlenderbotSmallTokenizer,
        BlenderbotTokenizer,
        GPT2Tokenizer,
        M2M100Tokenizer,
        MarianTokenizer,
        MBartTokenizer,
        NllbTokenizer,
        Qwen2Tokenizer,
        T5Tokenizer,
    )

    if family == "marian":
        model = _spm(work, "unigram")
        vocab = {"</s>": 0, "<unk>": 1}
        for p, _ in _spm_pieces(model):
            vocab.setdefault(p, len(vocab))
        vocab["<pad>"] = len(vocab)
        (work / "marian_vocab.json").write_text(json.dumps(vocab))
        return MarianTokenizer(str(model), str(model), str(work / "marian_vocab.json"))
    if family == "t5":
        pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + _spm_pieces(_spm(work, "unigram"))
        return T5Tokenizer(vocab=pieces, extra_ids=0)
    if family == "mbart":
        pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + _spm_pieces(_spm(work, "unigram"))
        return MBartTokenizer(vocab=pieces, src_lang="en_XX", tgt_lang="de_DE")
    if family == "m2m100":
        vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
        model = _spm(work, "unigram")
        for p, _ in _spm_pieces(model):
            vocab.setdefault(p, len(vocab))
        (work / "m2m_vocab.json").write_text(json.dumps(vocab))
        return M2M100Tokenizer(str(work / "m2m_vocab.json"), str(model), src_lang="en", tgt_lang="de")
    if family == "nllb":
        vocab, merges = _sp_bpe(["<s>", "<pad>", "</s>", "<unk>"])
        return NllbTokenizer(vocab=vocab, merges=merges, src_lang="eng_Latn", tgt_lang="deu_Latn")
    if family in ("bart", "blenderbot"):
        specials = ["<s>", "<pad>", "</s>", "<unk>"] if family == "bart" else ["<pad>", "<s>", "</s>", "<unk>"]
        vocab, merges = _byte_bpe(specials)
        vocab.setdefault("<mask>", len(vocab))
        cls = BartTokenizer if family == "bart" else BlenderbotTokenizer
        return cls(vocab=vocab, merges=merges)
    if family == "blenderbot-small":
        vocab, merges = _word_bpe(["__null__", "__start__", "__end__", "__unk__"])
        (work / "bbs_vocab.json").write_text(json.dumps(vocab))
        (work / "bbs_merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return BlenderbotSmallTokenizer(str(work / "bbs_vocab.json"), str(work / "bbs_merges.txt"))
    if family == "gpt2":
        vocab, merges = _byte_bpe(["<|endoftext|>"])
        return GPT2Tokenizer(vocab=vocab, merges=merges)
    if family == "qwen2":
        vocab, merges = _byte_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tok.chat_template = CHATML
        return tok
    if family == "llama":  # SmolLM2's layout: a byte-level BPE with ChatML special tokens
        vocab, merges = _byte_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        tok = GPT2Tokenizer(vocab=vocab, merges=merges, bos_token="<|im_start|>", eos_token="<|im_end|>",
                            unk_token="<|endoftext|>", pad_token="<|im_end|>")
        tok.chat_template = CHATML
        return tok
    raise ValueError(family)


# --------------------------------------------------------------------------- models
def _config(family: str, tok: Any) -> Any:
    import transformers as tf

    ids = list(tok.get_vocab().values()) + list(getattr(tok, "lang_token_to_id", {}).values())
    v = max(len(tok), max(ids) + 1) + int(getattr(tok, "num_madeup_words", 0))
    seq = dict(vocab_size=v, d_model=D, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, init_std=0.3,
               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, dropout=0.0, attention_dropout=0.0,
               activation_dropout=0.0, tie_word_embeddings=False)
    if family == "marian":
        return tf.MarianConfig(**seq, max_position_embeddings=64, decoder_start_token_id=tok.pad_token_id,
                               scale_embedding=True, activation_function="swish")
    if family == "t5":
        return tf.T5Config(vocab_size=v, d_model=D, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                           num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
                           feed_forward_proj="gated-gelu", tie_word_embeddings=False, initializer_factor=2.5,
                           dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    if family == "bart":
        return tf.BartConfig(**seq, max_position_embeddings=64, bos_token_id=0, decoder_start_token_id=2)
    if family == "mbart":
        return tf.MBartConfig(**seq, max_position_embeddings=64, bos_token_id=0, decoder_start_token_id=2,
                              scale_embedding=True)
    if family in ("m2m100", "nllb"):
        return tf.M2M100Config(**seq, max_position_embeddings=64, bos_token_id=0, decoder_start_token_id=2,
                               scale_embedding=True)
    if family == "blenderbot":
        return tf.BlenderbotConfig(**seq, max_position_embeddings=48, bos_token_id=1, decoder_start_token_id=1,
                                   scale_embedding=True)
    if family == "blenderbot-small":
        return tf.BlenderbotSmallConfig(**seq, max_position_embeddings=64, bos_token_id=1,
                                        decoder_start_token_id=1, scale_embedding=True)
    causal = dict(vocab_size=v, hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  initializer_range=0.3, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if family == "llama":
        return tf.LlamaConfig(**causal, num_key_value_heads=2, max_position_embeddings=96, bos_token_id=None,
                              tie_word_embeddings=True)
    if family == "qwen2":
        return tf.Qwen2Config(**causal, num_key_value_heads=2, max_position_embeddings=96,
                              tie_word_embeddings=True, use_sliding_window=False)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=v, n_embd=D, n_layer=2, n_head=4, n_inner=64, n_positions=64,
                             initializer_range=0.3, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False)
    raise ValueError(family)


def build(family: str, root: Path) -> Path:
    """Build (once) the tiny checkpoint of ``family`` under ``root``; returns its directory."""
    import torch
    import transformers as tf

    out = root / family
    if (out / "model.safetensors").is_file():
        return out
    work = root / "_tokenizers"
    work.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(family, out, work)
    cfg = _config(family, tok)
    torch.manual_seed(SEED)
    auto = tf.AutoModelForSeq2SeqLM if family in SEQ2SEQ else tf.AutoModelForCausalLM
    model = auto.from_config(cfg).eval()
    if family == "qwen2":  # q/k/v biases start at zero; make them count
        with torch.no_grad():
            for layer in model.model.layers:
                for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    lin.bias.normal_(0.0, 0.3)
    gen = model.generation_config  # transformers 5 keeps generation parameters out of the config
    if family == "marian":
        gen.bad_words_ids = [[tok.pad_token_id]]
    if family == "bart":
        gen.forced_bos_token_id = 0
    tmp = root / f".{family}.tmp"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def build_all(root: Path, families: tuple[str, ...] = FAMILIES) -> dict[str, Path]:
    return {f: build(f, root) for f in families}


# --------------------------------------------------------------------------- GGUF-like weights
def ggml_q4_1(w: Any) -> Any:
    """``w`` (N, K) float32 through ggml's Q4_1 (blocks of 32 along K: fp16 scale d and minimum m,
    q = min(15, int((x - min) / d + 0.5))) and back as gguf-py dequantises it: fp32(d * q) + m."""
    import numpy as np

    n, k = w.shape
    b = w.reshape(n, k // 32, 32).astype(np.float32)
    mn, mx = b.min(-1, keepdims=True), b.max(-1, keepdims=True)
    d = (mx - mn) / np.float32(15)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.minimum(15, ((b - mn) * inv + np.float32(0.5)).astype(np.int8)).astype(np.float32)
    d16, m16 = d.astype(np.float16).astype(np.float32), mn.astype(np.float16).astype(np.float32)
    return ((d16 * q).astype(np.float32) + m16).reshape(n, k)


def ggml_q8_0(w: Any) -> Any:
    """``w`` (N, K) float32 through ggml's Q8_0 (blocks of 32: fp16 scale amax / 127, q = round(x / d))
    and back: fp32(d * q)."""
    import numpy as np

    n, k = w.shape
    b = w.reshape(n, k // 32, 32).astype(np.float32)
    d = np.abs(b).max(-1, keepdims=True) / np.float32(127)
    q = np.rint(b / np.where(d > 0, d, 1)).astype(np.float32)
    return (d.astype(np.float16).astype(np.float32) * q).astype(np.float32).reshape(n, k)


def build_gguf_like(root: Path) -> Path:
    """The tiny Llama with its projections put through Q4_1 and its tied embedding / head through Q8_0 and
    dequantised back to fp32, as a GGUF file would carry them: what the embedded chat model's checkpoint is."""
    import shutil

    import numpy as np
    import torch
    import transformers as tf

    out = root / "llama-gguf-like"
    if (out / "model.safetensors").is_file():
        return out
    src = build("llama", root)
    model = tf.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                        layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                lin.weight.copy_(torch.from_numpy(ggml_q4_1(lin.weight.numpy())))
        emb = model.model.embed_tokens.weight
        emb.copy_(torch.from_numpy(ggml_q8_0(emb.numpy().astype(np.float32))))
    tmp = root / ".llama-gguf-like.tmp"
    model.save_pretrained(tmp)
    for f in src.iterdir():
        if f.is_file() and not (tmp / f.name).exists():
            shutil.copy2(f, tmp / f.name)
    tmp.rename(out)
    return out
