"""The committed dialogue prompt set eval/data/chat_prompts.jsonl (cut by models/recipe/build_chat_prompts.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "eval" / "data"
PROMPTS = DATA / "chat_prompts.jsonl"
CARD = DATA / "CHAT_DATA_CARD.md"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    with PROMPTS.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_has_enough_rows(rows):
    assert len(rows) >= 300


def test_rows_are_well_formed(rows):
    for row in rows:
        assert set(row) == {"id", "messages", "reference", "source"}, row.get("id")
        msgs = row["messages"]
        assert msgs, row["id"]
        assert msgs[-1]["role"] == "user", row["id"]
        for i, m in enumerate(msgs):
            assert set(m) == {"role", "content"}, row["id"]
            assert isinstance(m["content"], str) and m["content"].strip(), row["id"]
            # roles alternate, counted back from the final user turn
            assert m["role"] == ("user" if (len(msgs) - 1 - i) % 2 == 0 else "assistant"), row["id"]
        assert isinstance(row["reference"], str) and row["reference"].strip(), row["id"]
        assert row["source"].startswith("chitchat-dataset 0.9.0 conversation "), row["id"]


def test_ids_unique_and_one_prompt_per_conversation(rows):
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    sources = [r["source"] for r in rows]
    assert len(set(sources)) == len(sources)


def test_data_card_matches(rows):
    card = CARD.read_text(encoding="utf-8")
    assert "MIT" in card and "chitchat-dataset==0.9.0" in card
    assert f"| prompts written | {len(rows)} |" in card
