"""Train the embedded seq2seq models: en->de MarianMTModel and the BlenderBot-small dialogue model.

``--arch marian`` (default) trains the translation model from the corpus build_corpus.py made;
``--arch blenderbot-small`` trains the dialogue model from the (context -> reply) pairs
build_dialogue.py made, with BlenderBot-small's own tokenizer class (a lower-cased word-level BPE,
``@@`` continuation marks, trained here on the training pairs) and best-by-dev perplexity.
Both read ``--corpus/train.tsv`` and ``--corpus/dev.tsv`` (``id<TAB>source<TAB>target``).

1. a joint SentencePiece unigram vocabulary (default 8k) on the training English and German;
2. a small ``MarianMTModel`` (d_model 256, 3+3 layers by default, tied embeddings);
3. token-bucketed batches, AdamW, inverse-square-root schedule with warm-up, label smoothing;
4. a time budget (``--minutes``), optionally ending with a linear decay of the learning rate to
   zero over its last ``--anneal-minutes``; checkpoints every ``--save-every`` minutes (written atomically,
   so the run can be stopped at any time and the newest checkpoint used), greedy dev BLEU at
   each checkpoint, the best-by-dev weights kept in ``--out/best``;
5. ``--export DIR``: the best checkpoint saved with ``save_pretrained`` (fp16 safetensors
   by default) plus the Marian tokenizer files, ready for ``MarianMTModel.from_pretrained``.

Run: ``python models/recipe/train_marian.py --minutes 90`` (resumes from ``--out/last`` if present);
the dialogue model: ``python models/recipe/train_marian.py --arch blenderbot-small --corpus build/dialogue
--out build/dialogue_train2 --select ppl --dev-max-new 40 --layers 4 --lr 5e-4 --warmup 1000 --max-tokens 3000
--minutes 240 --anneal-minutes 30``.

Each checkpoint logs ``context_gain_nats`` (:func:`context_gain`): what the source is worth to the
decoder.  The first embedded dialogue model (``--lr 1e-3 --warmup 150``, post-LN BlenderBot-small)
scored 0.000 from its first checkpoints on: its encoder had collapsed (the same output for every
input), so it answers every prompt the same; the warning below names it when it happens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import sacrebleu
import sentencepiece as spm
import torch
from transformers import MarianConfig, MarianMTModel, MarianTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dialogue_arch  # noqa: E402


def read_tsv(path: Path) -> list[tuple[str, str]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 3:
                rows.append((parts[1], parts[2]))
    return rows


def build_vocab(corpus: list[tuple[str, str]], out: Path, size: int) -> None:
    """SentencePiece model + Marian vocab.json (</s>=0, <unk>=1, pieces, <pad>=last)."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "vocab.json").exists():
        return
    text = out / "spm_train.txt"
    with text.open("w", encoding="utf-8") as fh:
        for en, de in corpus:
            fh.write(en + "\n" + de + "\n")
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(out / "spm"), vocab_size=size - 2,
        model_type="unigram", character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=-1,
        pad_id=-1, input_sentence_size=400000, shuffle_input_sentence=True, num_threads=2,
    )
    text.unlink()
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(1, sp.get_piece_size()):
        vocab[sp.id_to_piece(i)] = len(vocab)
    vocab["<pad>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0))
    shutil.copy(out / "spm.model", out / "source.spm")
    shutil.copy(out / "spm.model", out / "target.spm")


def make_tokenizer(vocab_dir: Path) -> MarianTokenizer:
    return MarianTokenizer(
        source_spm=str(vocab_dir / "source.spm"), target_spm=str(vocab_dir / "target.spm"),
        vocab=str(vocab_dir / "vocab.json"), source_lang="en", target_lang="de",
        model_max_length=256,
    )


def make_model(tok: MarianTokenizer, args: argparse.Namespace) -> MarianMTModel:
    cfg = MarianConfig(
        vocab_size=len(tok), decoder_vocab_size=len(tok), d_model=args.d_model,
        encoder_layers=args.layers, decoder_layers=args.layers,
        encoder_attention_heads=args.heads, decoder_attention_heads=args.heads,
        encoder_ffn_dim=args.ffn, decoder_ffn_dim=args.ffn, max_position_embeddings=256,
        dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, activation_function="swish",
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id, forced_eos_token_id=tok.eos_token_id,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True, scale_embedding=True,
        max_length=256, num_beams=1,
    )
    return MarianMTModel(cfg)


def model_class(arch: str) -> type:
    return dialogue_arch.BlenderbotSmallForConditionalGeneration if arch == "blenderbot-small" else MarianMTModel


def tokenizer_class(arch: str) -> type:
    return dialogue_arch.BlenderbotSmallTokenizer if arch == "blenderbot-small" else MarianTokenizer


def encode(tok, rows: list[tuple[str, str]], max_len: int, arch: str = "marian") -> list[tuple[list[int], list[int]]]:
    if arch == "blenderbot-small":
        fast = dialogue_arch.FastEncoder(tok)
        fast.check([r[i] for r in rows[::200] for i in (0, 1)], max_len)
        eos = tok.eos_token_id
        return [(fast(s, max_len), dialogue_arch.with_eos(fast(t, max_len - 1), eos)) for s, t in rows]
    src = tok([r[0] for r in rows], truncation=True, max_length=max_len)["input_ids"]
    tgt = tok(text_target=[r[1] for r in rows], truncation=True, max_length=max_len)["input_ids"]
    return list(zip(src, tgt))


def batches(data: list[tuple[list[int], list[int]]], max_tokens: int, rng: random.Random):
    """Token-bucketed batches: sort by length in shuffled chunks so padding stays small."""
    idx = list(range(len(data)))
    rng.shuffle(idx)
    chunk = 4096
    out = []
    for c in range(0, len(idx), chunk):
        part = sorted(idx[c:c + chunk], key=lambda i: (len(data[i][0]), len(data[i][1])))
        cur: list[int] = []
        longest = 0
        for i in part:
            longest_new = max(longest, len(data[i][0]), len(data[i][1]))
            if cur and longest_new * (len(cur) + 1) > max_tokens:
                out.append(cur)
                cur, longest_new = [], max(len(data[i][0]), len(data[i][1]))
            cur.append(i)
            longest = longest_new
        if cur:
            out.append(cur)
    rng.shuffle(out)
    return out


def collate(data, ids: list[int], pad: int, start: int):
    src = [data[i][0] for i in ids]
    tgt = [data[i][1] for i in ids]
    s_len = max(map(len, src))
    t_len = max(map(len, tgt))
    input_ids = torch.full((len(ids), s_len), pad)
    attn = torch.zeros((len(ids), s_len), dtype=torch.long)
    labels = torch.full((len(ids), t_len), -100)
    dec_in = torch.full((len(ids), t_len), pad)
    for j, (s, t) in enumerate(zip(src, tgt)):
        input_ids[j, : len(s)] = torch.tensor(s)
        attn[j, : len(s)] = 1
        labels[j, : len(t)] = torch.tensor(t)
        dec_in[j, 0] = start
        dec_in[j, 1 : len(t)] = torch.tensor(t[:-1])
    return input_ids, attn, dec_in, labels


def context_gain(model, data: list[tuple[list[int], list[int]]], pad: int, start: int, ppl: float) -> float:
    """Nats per target token the source is worth: dev cross-entropy with each target given the *next* pair's
    source, minus with its own.  About 0 means the decoder ignores the encoder (a collapsed encoder: the
    first dialogue model's encoder gave the same output for every input, 0.000 here)."""
    shifted = [(data[(i + 1) % len(data)][0], t) for i, (_, t) in enumerate(data)]
    return math.log(dev_perplexity(model, shifted, pad, start)) - math.log(ppl)


@torch.no_grad()
def dev_perplexity(model, data: list[tuple[list[int], list[int]]], pad: int, start: int, bs: int = 32) -> float:
    """exp(mean cross-entropy per target token) on the dev pairs, no label smoothing, dropout off."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), bs):
        input_ids, attn, dec_in, labels = collate(data, list(range(i, min(i + bs, len(data)))), pad, start)
        logits = model(input_ids=input_ids, attention_mask=attn, decoder_input_ids=dec_in).logits
        total += float(torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1),
                                                         ignore_index=-100, reduction="sum"))
        count += int((labels != -100).sum())
    model.train()
    return math.exp(total / max(count, 1))


@torch.no_grad()
def dev_bleu(model, tok, rows, n: int, bs: int = 32, max_new: int = 256) -> tuple[float, float, list[str]]:
    model.eval()
    rows = rows[:n]
    hyps: list[str] = []
    for i in range(0, len(rows), bs):
        enc = tok([r[0] for r in rows[i : i + bs]], return_tensors="pt", padding=True, truncation=True, max_length=256)
        out = model.generate(**enc, num_beams=1, do_sample=False, max_new_tokens=max_new)
        hyps += tok.batch_decode(out, skip_special_tokens=True)
    model.train()
    refs = [[r[1] for r in rows]]
    return sacrebleu.corpus_bleu(hyps, refs).score, sacrebleu.corpus_chrf(hyps, refs).score, hyps


def save_atomic(model, tok, state: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    torch.save(state, tmp / "train_state.pt")
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def export(ckpt: Path, dest: Path, dtype: str, arch: str = "marian") -> None:
    model = model_class(arch).from_pretrained(ckpt)
    tok = tokenizer_class(arch).from_pretrained(ckpt)
    if dtype == "fp16":
        model = model.half()
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    meta = json.loads((ckpt / "train_log.json").read_text()) if (ckpt / "train_log.json").exists() else {}
    (dest / "training.json").write_text(json.dumps(meta, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["marian", "blenderbot-small"], default="marian")
    ap.add_argument("--corpus", type=Path, default=Path("build/corpus"))
    ap.add_argument("--out", type=Path, default=Path("build/train"))
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=3000, help="padded tokens per side per batch")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=800)
    ap.add_argument("--minutes", type=float, default=90.0)
    ap.add_argument("--save-every", type=float, default=8.0, help="minutes")
    ap.add_argument("--anneal-minutes", type=float, default=0.0,
                    help="decay the learning rate linearly to 0 over the last N minutes of the budget")
    ap.add_argument("--dev-n", type=int, default=300)
    ap.add_argument("--dev-max-new", type=int, default=256, help="new tokens per dev reply (greedy)")
    ap.add_argument("--select", choices=["bleu", "ppl"], default="bleu",
                    help="best checkpoint by dev BLEU or by dev perplexity")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--export", type=Path, help="only export --out/best to this directory")
    ap.add_argument("--export-dtype", choices=["fp16", "fp32"], default="fp16")
    ap.add_argument("--export-from", choices=["best", "last"], default="best",
                    help="the checkpoint --export takes: the best by --select, or the last one saved")
    args = ap.parse_args(argv)

    if args.export:
        export(args.out / args.export_from, args.export, args.export_dtype, args.arch)
        print(f"exported {args.out / args.export_from} -> {args.export}")
        return 0

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    train_rows = read_tsv(args.corpus / "train.tsv")
    dev_rows = read_tsv(args.corpus / "dev.tsv")
    bbs = args.arch == "blenderbot-small"
    (dialogue_arch.build_vocab if bbs else build_vocab)(train_rows, args.out / "vocab", args.vocab_size)
    tok = (dialogue_arch.make_tokenizer if bbs else make_tokenizer)(args.out / "vocab")
    data = encode(tok, train_rows, 128, args.arch)
    dev_data = encode(tok, dev_rows, 128, args.arch)
    print(f"train pairs {len(data)}; vocab {len(tok)}", flush=True)

    last = args.out / "last"
    if last.exists():
        model = model_class(args.arch).from_pretrained(last)
        state = torch.load(last / "train_state.pt", weights_only=False)
        print(f"resumed at step {state['step']}", flush=True)
    else:
        model = (dialogue_arch.make_model if bbs else make_model)(tok, args)
        state = {"step": 0, "epoch": 0, "elapsed_s": 0.0, "best_bleu": -1.0, "best_ppl": math.inf, "log": []}
    # every start or resume, with its arguments (a run may change corpus or settings part-way)
    state.setdefault("runs", []).append({"from_step": state["step"],
                                         "args": {k: str(v) for k, v in vars(args).items()}})
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params / 1e6:.2f} M", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.01)
    if "opt" in state:
        opt.load_state_dict(state["opt"])
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=0.1)
    pad, start = tok.pad_token_id, model.config.decoder_start_token_id
    model.train()

    t0 = time.monotonic() - state["elapsed_s"]
    next_save = time.monotonic() + args.save_every * 60
    budget_end = t0 + args.minutes * 60
    done = False
    tokens_seen = 0
    while not done:
        for ids in batches(data, args.max_tokens, rng):
            step = state["step"] + 1
            lr = args.lr * min(step / args.warmup, math.sqrt(args.warmup / step))
            remaining = budget_end - time.monotonic()
            if args.anneal_minutes and remaining < args.anneal_minutes * 60:
                lr *= max(remaining, 0.0) / (args.anneal_minutes * 60)
            for g in opt.param_groups:
                g["lr"] = lr
            input_ids, attn, dec_in, labels = collate(data, ids, pad, start)
            logits = model(input_ids=input_ids, attention_mask=attn, decoder_input_ids=dec_in).logits
            loss = loss_fn(logits.view(-1, logits.size(-1)), labels.view(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            state["step"] = step
            tokens_seen += int((labels != -100).sum())
            if step % 50 == 0:
                el = time.monotonic() - t0
                print(f"step {step} ep {state['epoch']} loss {loss.item():.3f} lr {lr:.2e} "
                      f"elapsed {el / 60:.1f} min tgt-tokens this run {tokens_seen}", flush=True)
            now = time.monotonic()
            if now >= next_save or now >= budget_end:
                state["elapsed_s"] = now - t0
                bleu, chrf, hyps = dev_bleu(model, tok, dev_rows, args.dev_n, max_new=args.dev_max_new)
                ppl = dev_perplexity(model, dev_data[: args.dev_n], pad, start)
                gain = context_gain(model, dev_data[: args.dev_n], pad, start, ppl)
                entry = {"step": step, "epoch": state["epoch"], "minutes": round(state["elapsed_s"] / 60, 1),
                         "dev_bleu": round(bleu, 2), "dev_chrf": round(chrf, 2), "dev_ppl": round(ppl, 2),
                         "context_gain_nats": round(gain, 4), "loss": round(loss.item(), 3),
                         "corpus": str(args.corpus)}
                if step > args.warmup and gain < 0.01:
                    print(f"WARNING: context gain {gain:.4f} nats/token: the decoder ignores the encoder "
                          "(an encoder collapsed early in training does not recover; lower --lr / longer --warmup)",
                          flush=True)
                state["log"].append(entry)
                print("CHECKPOINT", json.dumps(entry), "|", hyps[0], flush=True)
                state["opt"] = opt.state_dict()
                save_atomic(model, tok, state, last)
                better = ppl < state.get("best_ppl", math.inf) if args.select == "ppl" else bleu > state["best_bleu"]
                if better:
                    state["best_bleu"], state["best_ppl"] = bleu, ppl
                    best_state = {k: v for k, v in state.items() if k != "opt"}
                    save_atomic(model, tok, best_state, args.out / "best")
                log = {"args": {k: str(v) for k, v in vars(args).items()}, "params": n_params,
                       "threads": args.threads, "torch": torch.__version__,
                       "cpu": os.cpu_count(), "log": state["log"], "best_dev_bleu": state["best_bleu"],
                       "best_dev_ppl": state.get("best_ppl"), "select": args.select, "runs": state["runs"]}
                for d in (last, args.out / "best"):
                    if d.exists():
                        (d / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
                next_save = time.monotonic() + args.save_every * 60
                if now >= budget_end:
                    done = True
                    break
        else:
            state["epoch"] += 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
