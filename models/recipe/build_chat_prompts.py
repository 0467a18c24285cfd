"""Cut the committed dialogue prompt set ``eval/data/chat_prompts.jsonl`` from the Chit-Chat dataset.

Source: the PyPI package ``chitchat-dataset==0.9.0`` (MIT; the BYU PCC lab's Chit-Chat Challenge,
7,168 human two-person conversations).  The wheel carries the data as
``chitchat_dataset/dataset.json``, a mapping conversation UUID -> ``{"messages": [turn, ...], ...}``
where a turn is a list of consecutive utterances ``{"text", "timestamp", "sender"}`` of one
speaker.  The file is located with ``importlib.util.find_spec`` and read as JSON: no network.

Each prompt is one position in one conversation:

* a turn's text is its utterances joined with spaces (whitespace normalised, NFC);
* the reference is a human turn, the context the 1-3 turns before it (the number drawn per
  conversation), with roles alternating and ending on ``user`` (the turn just before the
  reference); the reference plays the ``assistant``;
* every turn used (context and reference) has 4-40 words, at least 3 of them with letters, no
  URL, e-mail address or long digit run, and none of a short list of slurs/strong profanity;
* one prompt per conversation, conversations drawn at random (``--seed``), and a conversation is
  skipped when its last user turn or its reference repeats (normalised) one already taken, so the
  set holds no near-duplicates such as a dozen "how are you doing today?" prompts.

Outputs one JSON object per line::

    {"id": "chitchat-0001", "messages": [{"role": "user", "content": "..."}, ...],
     "reference": "...", "source": "chitchat-dataset 0.9.0 conversation <uuid>"}

and the data card ``eval/data/CHAT_DATA_CARD.md`` with the counts and length statistics.

Run: ``pip install chitchat-dataset==0.9.0 && python models/recipe/build_chat_prompts.py``
(a few seconds; the output is byte-identical for the same seed and package version).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import random
import re
import statistics
import sys
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

PACKAGE = "chitchat_dataset"
DISTRIBUTION = "chitchat-dataset"
VERSION = "0.9.0"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "eval" / "data" / "chat_prompts.jsonl"
DEFAULT_CARD = REPO / "eval" / "data" / "CHAT_DATA_CARD.md"
DEFAULT_SEED = 20240501
DEFAULT_N = 400
MIN_WORDS, MAX_WORDS = 4, 40
MAX_CONTEXT = 3

_URL = re.compile(r"https?://|www\.|\b[\w-]+\.(?:com|org|net|edu|io|ly|gov)\b", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b")
_DIGITS = re.compile(r"\d[\d\s().-]{6,}\d")
_PUNCT_ONLY = re.compile(r"^[\W_]+$")
# A deliberately short list: slurs and the strongest profanity.  Informal language stays (it is
# what the source is), but a benchmark prompt set should not put these in front of a reader.
_BLOCK = re.compile(
    r"\b(?:fuck\w*|shit\w*|bitch\w*|cunt\w*|dick|dicks|cock|cocks|pussy|porn\w*|sex\w*|"
    r"nigg\w*|fag\w*|retard\w*|rape\w*|whore\w*|slut\w*|kill (?:myself|yourself)|suicid\w*)\b",
    re.IGNORECASE,
)


def dataset_file() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"the '{DISTRIBUTION}' package is not installed: pip install {DISTRIBUTION}=={VERSION}")
    path = Path(next(iter(spec.submodule_search_locations))) / "dataset.json"
    if not path.is_file():
        sys.exit(f"{path} is missing: reinstall with pip install --force-reinstall {DISTRIBUTION}=={VERSION}")
    return path


def installed_version() -> str:
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def turn_text(turn: list[dict[str, Any]]) -> str:
    """Join a turn's utterances; a punctuation-only utterance ("?") attaches to the one before."""
    out = ""
    for utt in turn:
        t = normalise(str(utt.get("text") or ""))
        if not t:
            continue
        if out and not _PUNCT_ONLY.match(t):
            out += " "
        out += t
    return out


def usable(text: str) -> bool:
    words = text.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    if sum(1 for w in words if any(ch.isalpha() for ch in w)) < 3:
        return False
    return not (_URL.search(text) or _EMAIL.search(text) or _DIGITS.search(text) or _BLOCK.search(text))


def dedup_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def candidates(turns: list[str], ok: list[bool], k: int) -> list[int]:
    """Reference positions i whose turn and k preceding turns are all usable."""
    return [i for i in range(k, len(turns)) if all(ok[i - j] for j in range(k + 1))]


def cut(data: dict[str, Any], n: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    counts: Counter[str] = Counter(conversations=len(data))
    eligible: list[tuple[str, list[str], list[bool]]] = []
    for conv_id in sorted(data):
        messages = data[conv_id].get("messages") or []
        senders = [{u.get("sender") for u in turn} for turn in messages]
        if len(messages) < 2 or any(len(s) != 1 for s in senders):
            counts["skipped: fewer than 2 turns or a mixed-speaker turn"] += 1
            continue
        turns = [turn_text(t) for t in messages]
        ok = [usable(t) for t in turns]
        if not candidates(turns, ok, 1):
            counts["skipped: no usable (user, reply) pair"] += 1
            continue
        eligible.append((conv_id, turns, ok))
    counts["eligible conversations"] = len(eligible)

    order = list(range(len(eligible)))
    random.Random(seed).shuffle(order)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for idx in order:
        if len(rows) >= n:
            break
        conv_id, turns, ok = eligible[idx]
        rng = random.Random(f"{seed}:{conv_id}")  # str seeds are hashed with sha512: stable
        want = rng.choice(range(1, MAX_CONTEXT + 1))
        for k in range(want, 0, -1):  # fall back to a shorter context when needed
            pos = candidates(turns, ok, k)
            if pos:
                break
        i = rng.choice(pos)
        context = turns[i - k:i]
        if dedup_key(context[-1]) in seen or dedup_key(turns[i]) in seen:
            counts["skipped: repeats a prompt or reference already taken"] += 1
            continue
        seen.update({dedup_key(context[-1]), dedup_key(turns[i])})
        roles = ["user" if (k - 1 - j) % 2 == 0 else "assistant" for j in range(k)]
        rows.append({
            "id": f"chitchat-{len(rows) + 1:04d}",
            "messages": [{"role": r, "content": c} for r, c in zip(roles, context)],
            "reference": turns[i],
            "source": f"{DISTRIBUTION} {VERSION} conversation {conv_id}",
        })
    counts["prompts"] = len(rows)
    return rows, dict(counts)


def length_stats(values: list[int]) -> dict[str, float]:
    qs = statistics.quantiles(values, n=10)
    return {
        "min": min(values), "p10": qs[0], "median": statistics.median(values),
        "mean": round(statistics.fmean(values), 1), "p90": qs[-1], "max": max(values),
    }


def stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def words(s: str) -> int:
        return len(s.split())

    return {
        "context_turns": dict(sorted(Counter(len(r["messages"]) for r in rows).items())),
        "last_user_turn_words": length_stats([words(r["messages"][-1]["content"]) for r in rows]),
        "context_words": length_stats([sum(words(m["content"]) for m in r["messages"]) for r in rows]),
        "reference_words": length_stats([words(r["reference"]) for r in rows]),
        "reference_chars": length_stats([len(r["reference"]) for r in rows]),
    }


def _fmt(s: dict[str, float]) -> str:
    return " | ".join(f"{v:g}" for v in s.values())


def card(rows: list[dict[str, Any]], counts: dict[str, int], st: dict[str, Any], seed: int,
         data_sha: str, out_sha: str, out_name: str) -> str:
    ctx = ", ".join(f"{k} turn{'s' if k > 1 else ''}: {v}" for k, v in st["context_turns"].items())
    skipped = "\n".join(f"| {k} | {v:,} |" for k, v in counts.items() if k.startswith("skipped"))
    return f"""# Chat prompt set: `eval/data/{out_name}`

{len(rows)} short dialogue contexts, each with the human reply that followed it, for the chat
benchmarks (latency runs need realistic prompts; the reference allows a quality sanity check).

## Source

| | |
| --- | --- |
| dataset | Chit-Chat Challenge dataset, BYU Perception, Control & Cognition lab |
| package | PyPI `{DISTRIBUTION}=={VERSION}` (`{PACKAGE}/dataset.json`, read from the installed wheel, no network) |
| dataset.json sha256 | `{data_sha}` |
| license | MIT (Copyright (c) 2019 Perception, Control and Cognition Lab); the license travels in the wheel's `LICENSE` |
| upstream | https://github.com/BYU-PCCL/chitchat-dataset |
| citation | Myers, Etchart, Fulda (2020), *Conversational Scaffolding: An Analogy-Based Approach to Response Prioritization in Open-Domain Dialogs* |

The source holds {counts["conversations"]:,} conversations between two people chatting online about
an optional conversation-starter prompt; a conversation is a list of turns, a turn a run of
consecutive messages of one speaker.

## How it was cut

Script: `models/recipe/build_chat_prompts.py`, seed `{seed}`:
`python models/recipe/build_chat_prompts.py --seed {seed} --n {DEFAULT_N}`
(rerunning it with the same package version rewrites this file and the JSONL byte for byte).

1. A turn's text is its messages joined with spaces, whitespace normalised (NFC).
2. A turn is usable if it has {MIN_WORDS}-{MAX_WORDS} words (at least 3 with letters) and holds no
   URL, e-mail address, long digit run (phone numbers) or an entry of a short list of slurs and
   strong profanity.
3. Conversations with fewer than two turns (almost half of the source: one person wrote and nobody
   answered) or without a usable pair of consecutive turns are skipped.
4. Eligible conversations are shuffled with the seed; from each, one position is drawn: a context
   of 1-3 usable turns (the length drawn uniformly, shortened when the conversation has no such
   run) followed by a usable reply.  Roles alternate and the context ends with `user`; the
   reply is the `reference` (it would be the `assistant` turn).
5. A conversation is skipped when its last user turn or its reply repeats (case and punctuation
   folded) one already taken.  One prompt per conversation; the first {len(rows)} kept.

| count | |
| --- | --- |
| conversations in the source | {counts["conversations"]:,} |
{skipped}
| eligible conversations | {counts["eligible conversations"]:,} |
| prompts written | {len(rows)} |

Each line: `{{"id", "messages": [{{"role", "content"}}, ...], "reference", "source"}}`; `source`
names the conversation UUID in the dataset.

## Statistics

Context turns per prompt: {ctx}.

| words (whitespace tokens) | min | p10 | median | mean | p90 | max |
| --- | --- | --- | --- | --- | --- | --- |
| last user turn | {_fmt(st["last_user_turn_words"])} |
| whole context | {_fmt(st["context_words"])} |
| reference | {_fmt(st["reference_words"])} |
| reference (characters) | {_fmt(st["reference_chars"])} |

JSONL sha256: `{out_sha}`.

## Caveats

* Conversational and informal: lower case, missing punctuation, typos, slang, and messages
  split mid-sentence (a turn joins them, so sentence boundaries can be missing: "it would be so
  cool Do you keep up with any TV shows").  Many speakers appear to be university students;
  topics are everyday chit-chat, opinions and small talk, in English (not all speakers native).
* The speakers were talking to each other, not to an assistant: a "user" turn may be an answer,
  a joke or a question back, and the reference is one human's reply, not the best reply.  Many
  other replies are as good, so BLEU/chrF of a model's answer against the reference are low by
  nature and useful only to compare systems (or precisions of one model) on the same set, never
  as an absolute quality score.  Latency measurements do not depend on the reference.
* A context of 1-3 turns is short: the start of the conversation (including its topic prompt) is
  not shown, so some prompts refer to things said earlier.
* The filters are heuristic: the word list removes the strongest language only, and personal
  remarks, mild profanity or opinions some readers find objectionable remain.  Speaker ids and
  timestamps are not copied.
* The SmolLM2 chat template adds a default system message when a prompt has none; prompts here
  carry no system turn.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, default=None, help="dataset.json (default: the installed wheel's)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--card", type=Path, default=DEFAULT_CARD, help="data card to write ('' to skip)")
    ap.add_argument("--n", type=int, default=DEFAULT_N)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = ap.parse_args(argv)

    if args.dataset is None:
        version = installed_version()
        if version != VERSION:
            sys.exit(f"{DISTRIBUTION} {version} is installed; this set is cut from {VERSION}: "
                     f"pip install {DISTRIBUTION}=={VERSION}")
        args.dataset = dataset_file()
    raw = args.dataset.read_bytes()
    data = json.loads(raw)
    rows, counts = cut(data, args.n, args.seed)
    if len(rows) < args.n:
        print(f"warning: only {len(rows)} prompts could be cut (asked for {args.n})", file=sys.stderr)

    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    st = stats(rows)
    if str(args.card):
        args.card.write_text(card(rows, counts, st, args.seed, hashlib.sha256(raw).hexdigest(),
                                  hashlib.sha256(text.encode()).hexdigest(), args.out.name), encoding="utf-8")
    print(json.dumps({"out": str(args.out), "counts": counts, **st}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
