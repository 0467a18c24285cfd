"""Cut the (context -> reply) pairs the embedded dialogue model is trained on, split by conversation.

Source: the Chit-Chat dataset (PyPI ``chitchat-dataset==0.9.0``, MIT), read from the installed
wheel exactly as :mod:`build_chat_prompts` reads it (same turn joining and filters).  Three
disjoint sets of *conversations*:

* **test**: the conversations of the committed chat prompt set ``eval/data/chat_prompts.jsonl``
  (400 prompts, one per conversation; named by the UUID in each line's ``source``).  The dialogue
  model never sees them, so the chat sweep scores it and SmolLM2 on the same held-out prompts;
* **dev**: ``--dev-n`` (300) further conversations drawn with ``--seed`` among the eligible ones,
  one prompt each, cut by :func:`build_chat_prompts.cut` (so the same 1-3 turn contexts and
  filters), written to ``eval/data/dialogue_dev.jsonl`` (committed: best-checkpoint selection);
* **train**: every other conversation with at least two turns; each of its turns after the first
  that passes the filters (1-60 words, no URL / e-mail / digit run / blocked word) is a reply, its
  context the 1-3 turns before it (the number drawn per pair with the seed), joined with
  testbed's BlenderBot turn separator (two spaces, :data:`testbed.spec.TURN_SEPARATOR`, what
  ``testbed chat`` sends) and cut to its last ``MAX_CONTEXT_WORDS`` words.

Outputs ``--out/train.tsv`` and ``--out/dev.tsv`` (``id<TAB>context<TAB>reply``, what
``train_marian.py --corpus`` reads) and ``--out/split.json`` (the conversation ids per split and
the counts).  Run: ``python models/recipe/build_dialogue.py`` (a few seconds, deterministic).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_chat_prompts as bcp  # noqa: E402

from testbed.io import write_text_atomic  # noqa: E402
from testbed.spec import TURN_SEPARATOR  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CHAT_PROMPTS = REPO / "eval" / "data" / "chat_prompts.jsonl"
DEV_OUT = REPO / "eval" / "data" / "dialogue_dev.jsonl"
DEFAULT_SEED = 20261130
MAX_REPLY_WORDS = 60
MAX_CONTEXT_WORDS = 64


def test_conversations(path: Path = CHAT_PROMPTS) -> set[str]:
    """The conversation UUIDs of the committed chat prompt set (its ``source`` fields)."""
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.add(json.loads(line)["source"].rsplit(" ", 1)[-1])
    return out


def reply_ok(text: str) -> bool:
    words = text.split()
    if not 1 <= len(words) <= MAX_REPLY_WORDS or not any(ch.isalpha() for ch in text):
        return False
    return not (bcp._URL.search(text) or bcp._EMAIL.search(text) or bcp._DIGITS.search(text)
                or bcp._BLOCK.search(text))


# words too common to say what a turn is about (a pair is topical when its reply shares another word with the
# last context turn)
STOP = frozenset("""i you the a an and or but to of in on at for is are was were be been it that this what do does did
have has had my your me we they he she them so not no yes yeah just like it's i'm don't can would could will with about
how why when where who which there their if as get got really know think lol haha oh ok okay well too very all some any
one out up go going good great nice much more than then also am im its thats dont u""".split())


def topical(context: str, reply: str) -> bool:
    """Whether the reply shares a content word (3+ letters, not in STOP) with the context's last turn."""
    def words(text: str) -> set[str]:
        return {w for w in re.findall(r"[a-z']+", text.lower()) if len(w) > 2 and w not in STOP}

    return bool(words(context.split(TURN_SEPARATOR)[-1]) & words(reply))


def join_context(turns: list[str]) -> str:
    words = TURN_SEPARATOR.join(turns).split(" ")
    kept = [w for w in words if w] if len([w for w in words if w]) > MAX_CONTEXT_WORDS else None
    if kept is None:
        return TURN_SEPARATOR.join(turns)
    return " ".join(kept[-MAX_CONTEXT_WORDS:])


def conversation_turns(conv: dict[str, Any]) -> list[str] | None:
    messages = conv.get("messages") or []
    senders = [{u.get("sender") for u in turn} for turn in messages]
    if len(messages) < 2 or any(len(s) != 1 for s in senders):
        return None
    return [bcp.turn_text(t) for t in messages]


def train_pairs(data: dict[str, Any], conv_ids: list[str], seed: int) -> list[tuple[str, str, str]]:
    rows = []
    for conv_id in conv_ids:
        turns = conversation_turns(data[conv_id])
        if turns is None:
            continue
        rng = random.Random(f"{seed}:{conv_id}")
        for i in range(1, len(turns)):
            if not reply_ok(turns[i]) or not turns[i - 1].strip():
                continue
            k = min(rng.choice((1, 2, 3)), i)
            context = [t for t in turns[i - k:i] if t.strip()]
            rows.append((f"{conv_id}:{i}", join_context(context), turns[i]))
    return rows


def split(data: dict[str, Any], test_ids: set[str], dev_n: int, seed: int) -> dict[str, Any]:
    """Disjoint conversation sets and their rows: test (given), dev (cut here), train (the rest)."""
    rest = {k: v for k, v in data.items() if k not in test_ids}
    dev_rows, _ = bcp.cut(rest, dev_n, seed)
    for n, row in enumerate(dev_rows, 1):
        row["id"] = f"dialogue-dev-{n:04d}"
    dev_ids = {r["source"].rsplit(" ", 1)[-1] for r in dev_rows}
    train_ids = sorted(k for k in rest if k not in dev_ids)
    return {"dev_rows": dev_rows, "dev_ids": sorted(dev_ids), "test_ids": sorted(test_ids),
            "train_ids": train_ids, "train_rows": train_pairs(data, train_ids, seed)}


def _tsv(rows: list[tuple[str, str, str]]) -> str:
    return "".join("\t".join(c.replace("\t", " ") for c in r) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "build" / "dialogue")
    ap.add_argument("--dev-out", type=Path, default=DEV_OUT)
    ap.add_argument("--dev-n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--topical", action="store_true",
                    help="keep only training pairs whose reply shares a content word with the last context turn "
                         "(a fine-tuning set against generic replies; dev is unchanged)")
    args = ap.parse_args(argv)
    data = json.loads(bcp.dataset_file().read_text(encoding="utf-8"))
    s = split(data, test_conversations(), args.dev_n, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.dev_out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in s["dev_rows"]))
    if args.topical:
        s["train_rows"] = [r for r in s["train_rows"] if topical(r[1], r[2])]
    write_text_atomic(args.out / "train.tsv", _tsv(s["train_rows"]))
    dev = [(r["id"], TURN_SEPARATOR.join(m["content"] for m in r["messages"]), r["reference"]) for r in s["dev_rows"]]
    write_text_atomic(args.out / "dev.tsv", _tsv(dev))
    counts = {"conversations": len(data), "test_conversations": len(s["test_ids"]),
              "dev_conversations": len(s["dev_ids"]), "train_conversations": len(s["train_ids"]),
              "train_pairs": len(s["train_rows"]), "dev_pairs": len(dev), "seed": args.seed, "topical": args.topical,
              "package": f"{bcp.DISTRIBUTION}=={bcp.installed_version()}"}
    split_json = {**counts, "dev_ids": s["dev_ids"], "test_ids": s["test_ids"], "train_ids": s["train_ids"]}
    write_text_atomic(args.out / "split.json", json.dumps(split_json, indent=1) + "\n")
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
