"""Evaluate the embedded dialogue model on its held-out test prompts and write its example exchanges.

The test set is the committed chat prompt set ``eval/data/chat_prompts.jsonl`` (400 prompts whose
conversations build_dialogue.py kept out of training).  Replies come from testbed's own torch
engine (fp32, greedy, ``--max-new-tokens``), exactly what ``testbed chat --model <name>`` runs:
the prompt's turns joined with the BlenderBot turn separator.  Writes, into ``--out``:

* ``evaluation.json``: test BLEU / chrF of the replies against the human replies (sacreBLEU
  defaults, the sweep's scorer; and lower-cased, since the model's tokenizer lower-cases every
  reply), test perplexity (teacher-forced, per target token including EOS) and the settings;
* ``EXAMPLES.md``: the first ``--n`` test prompts with the model's reply and the human reply,
  copied unedited from the engine's output.

Run: ``python models/recipe/dialogue_examples.py`` (a minute or two on a CPU).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def reply_stats(examples: list[Any], replies_: list[str]) -> dict[str, Any]:
    """How varied and how on topic replies are: distinct replies, and the share that repeats a content word of
    the prompt's last turn (``build_dialogue.topical``: 3+ letters, not a stop word).  A model whose encoder
    collapsed gives one reply to every prompt (1 distinct); the human replies give the scale."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from build_dialogue import topical

    from testbed.spec import TURN_SEPARATOR

    contexts = [TURN_SEPARATOR.join(m["content"] for m in e.messages) for e in examples]
    n = max(1, len(replies_))
    return {"distinct_replies": len(set(replies_)),
            "on_topic_rate": round(sum(topical(c, r) for c, r in zip(contexts, replies_)) / n, 3)}


def replies(name: str, examples: list[Any], max_new: int, batch: int, threads: int) -> tuple[list[str], int]:
    """The model's replies, and how many ran to ``max_new`` tokens without EOS (finish reason ``length``:
    from the token ids; under greedy decoding mostly a phrase repeated until the limit)."""
    from testbed.config import EngineConfig
    from testbed.engines.registry import create_engine
    from testbed.engines.types import GenerationRequest

    engine = create_engine(EngineConfig(model=name, engine="torch", precision="fp32", threads=threads,
                                        max_new_tokens=max_new))
    out: list[str] = []
    at_limit = 0
    for i in range(0, len(examples), batch):
        reqs = [GenerationRequest(messages=tuple(e.messages)) for e in examples[i:i + batch]]
        gens = engine.generate(reqs)
        out += [g.text for g in gens]
        at_limit += sum(g.finish_reason == "length" for g in gens)
    engine.close()
    return out, at_limit


def perplexity(path: Path, examples: list[Any]) -> float:
    """exp(mean cross-entropy per reply token, EOS included), teacher-forced, fp32."""
    import torch
    from transformers import AutoTokenizer, BlenderbotSmallForConditionalGeneration

    from testbed.spec import TURN_SEPARATOR

    tok = AutoTokenizer.from_pretrained(path)
    model = BlenderbotSmallForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            src = tok(TURN_SEPARATOR.join(m["content"] for m in e.messages), return_tensors="pt",
                      truncation=True, max_length=model.config.max_position_embeddings)
            tgt = tok(str(e.reference))["input_ids"][: model.config.max_position_embeddings - 2] + [tok.eos_token_id]
            dec = torch.tensor([[model.config.decoder_start_token_id] + tgt[:-1]])
            logits = model(**src, decoder_input_ids=dec).logits[0]
            total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(tgt), reduction="sum"))
            count += len(tgt)
    return math.exp(total / count)


def examples_md(name: str, examples: list[Any], hyps: list[str], n: int, max_new: int) -> str:
    lines = [f"# {name}: {n} example exchanges (unedited)", "",
             f"The first {n} prompts of the held-out test set (`eval/data/chat_prompts.jsonl`, conversations "
             "the model never saw), the model's reply as testbed's torch engine returned it (fp32, greedy, "
             f"at most {max_new} new tokens), and the reply the human wrote.  Written by "
             "`models/recipe/dialogue_examples.py`; nothing was picked or edited.", ""]
    for i, (e, h) in enumerate(zip(examples[:n], hyps[:n]), 1):
        lines.append(f"## {i}. `{e.id}`")
        lines.append("")
        for m in e.messages:
            lines.append(f"> **{m['role']}:** {m['content']}  ")
        lines += ["", f"**model:** {h}", "", f"*human reply:* {e.reference}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import sacrebleu

    from testbed.datasets import load_dataset
    from testbed.io import write_text_atomic
    from testbed.metrics.accuracy import score
    from testbed.registry import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="chitchat-bbs-10m")
    ap.add_argument("--out", type=Path, help="default: the model's directory")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, help="only the first N test prompts (a quick check; default: all)")
    args = ap.parse_args(argv)
    path = resolve_model(args.model).local_path()
    out = args.out or path
    examples = load_dataset("chat", limit=args.limit)
    hyps, at_limit = replies(args.model, examples, args.max_new_tokens, args.batch, args.threads)
    refs = [str(e.reference) for e in examples]
    result = {
        "model": args.model, "test_set": "eval/data/chat_prompts.jsonl", "n": len(examples),
        "decoding": f"greedy, max_new_tokens {args.max_new_tokens}, torch fp32 (testbed engine)",
        "vs_human": score(hyps, refs),
        "vs_human_lowercased": {"bleu": round(sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score, 2),
                                "chrf": round(sacrebleu.corpus_chrf(hyps, [[r.lower() for r in refs]]).score, 2)},
        "test_perplexity": round(perplexity(path, examples), 2),
        "mean_reply_words": round(sum(len(h.split()) for h in hyps) / len(hyps), 1),
        "replies_at_token_limit": at_limit,  # no EOS within max_new_tokens
        # on topic: the reply repeats a content word of the prompt's last turn (reply_stats); human: the same
        # measure on the human replies, for scale
        "replies_model": reply_stats(examples, hyps),
        "replies_human": reply_stats(examples, refs),
        "replies": [{"id": e.id, "reply": h} for e, h in zip(examples, hyps)],
    }
    write_text_atomic(out / "evaluation.json", json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    write_text_atomic(out / "EXAMPLES.md", examples_md(args.model, examples, hyps, args.n, args.max_new_tokens))
    print(json.dumps({k: v for k, v in result.items() if k != "replies"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
