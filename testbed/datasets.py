"""Datasets: the committed test sets, and user files.

* ``test`` / ``dev``: the held-out en->de sets cut by document from LibreOffice help
  (``eval/data/{test,dev}.en-de.tsv``: ``doc<TAB>en<TAB>de``; see ``eval/data/DATA_CARD.md``);
* ``chat``: the dialogue prompts with a human reference reply (``eval/data/chat_prompts.jsonl``);
* a path to a ``.tsv`` (``source<TAB>reference`` or ``doc<TAB>source<TAB>reference``), a
  ``.txt`` (one source per line, no references) or a ``.jsonl`` (objects with ``text`` or
  ``messages``, and optionally ``reference``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from testbed.errors import TestbedError

BUILTIN = {"test": "test.en-de.tsv", "dev": "dev.en-de.tsv", "chat": "chat_prompts.jsonl"}


@dataclass(frozen=True)
class Example:
    id: str
    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    reference: str | None = None


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("testbed.eval").joinpath("data", BUILTIN[name])))


SUFFIXES = (".tsv", ".txt", ".jsonl")


def load_dataset(name_or_path: str, limit: int | None = None) -> list[Example]:
    """Load a built-in set by name or a file by path; ``limit`` keeps the first N examples.

    Raises :class:`TestbedError` naming the file and what is accepted for a file that is not
    found, not a ``.tsv`` / ``.txt`` / ``.jsonl``, unreadable, not UTF-8, malformed or empty.
    """
    accepted = f"one of {', '.join(BUILTIN)} or a path to a .tsv, .txt or .jsonl file"
    path = builtin_path(name_or_path) if name_or_path in BUILTIN else Path(name_or_path)
    if not path.is_file():
        raise TestbedError(f"dataset {name_or_path!r} not found: give {accepted}")
    if path.suffix not in SUFFIXES:
        raise TestbedError(f"dataset {name_or_path!r} is not a test set file (suffix {path.suffix or 'none'!r}): "
                           f"give {accepted}")
    try:
        return _read(path, limit)
    except UnicodeDecodeError as exc:
        raise TestbedError(f"dataset {name_or_path!r} is not UTF-8 text (byte {exc.start}): give {accepted}") from None
    except OSError as exc:
        raise TestbedError(f"dataset {name_or_path!r} cannot be read ({exc.strerror})") from None


def _read(path: Path, limit: int | None) -> list[Example]:
    out: list[Example] = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TestbedError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
                if not isinstance(obj, dict) or not ("text" in obj or "messages" in obj):
                    raise TestbedError(f"{path}:{n}: each line needs a 'text' or a 'messages' field")
                msgs = obj.get("messages")
                out.append(Example(str(obj.get("id", n)), obj.get("text"),
                                   tuple(msgs) if msgs else None, obj.get("reference")))
            elif path.suffix == ".tsv":
                cols = line.split("\t")
                if len(cols) not in (2, 3):
                    raise TestbedError(f"{path}:{n}: expected 2 or 3 tab-separated columns, got {len(cols)}")
                out.append(Example(f"{n}", cols[-2], None, cols[-1]))
            else:
                out.append(Example(f"{n}", line))
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise TestbedError(f"dataset {path} is empty")
    return out
