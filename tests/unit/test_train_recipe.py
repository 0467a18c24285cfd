"""The training recipe (models/recipe/train_marian.py) on a tiny dialogue corpus: checkpoints, resume, the
per-run record, the context-gain diagnostic and export, in seconds (a model a few hundred KB wide)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "models" / "recipe"))

import train_marian  # noqa: E402

WORDS = "pizza dogs cats music movies travel beach coffee books games summer winter school work".split()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    rows = [(f"c{i}:{j}", f"do you like {WORDS[i % len(WORDS)]} ?", f"i love {WORDS[i % len(WORDS)]} a lot")
            for i in range(120) for j in range(2)]
    (d / "train.tsv").write_text("".join("\t".join(r) + "\n" for r in rows[:200]))
    (d / "dev.tsv").write_text("".join("\t".join(r) + "\n" for r in rows[200:]))
    return d


def tiny(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["--arch", "blenderbot-small", "--corpus", str(corpus), "--out", str(out), "--vocab-size", "120",
            "--d-model", "16", "--layers", "1", "--heads", "2", "--ffn", "32", "--max-tokens", "200",
            "--warmup", "5", "--dev-n", "8", "--dev-max-new", "4", "--select", "ppl", "--threads", "1",
            "--minutes", "0.02", "--save-every", "0.01", *extra]


def test_a_run_checkpoints_resumes_records_each_run_and_exports(corpus, tmp_path):
    out = tmp_path / "train"
    assert train_marian.main(tiny(corpus, out)) == 0
    first = json.loads((out / "last" / "train_log.json").read_text())
    steps = first["log"][-1]["step"]
    assert steps > 0
    entry = first["log"][-1]
    # every checkpoint says which corpus it trained on and what the source is worth to the decoder
    assert entry["corpus"] == str(corpus) and isinstance(entry["context_gain_nats"], float)
    assert [r["from_step"] for r in first["runs"]] == [0]

    # a resume (here with a longer budget and another seed) continues from the saved step and is recorded
    assert train_marian.main(tiny(corpus, out, "--minutes", "0.04", "--seed", "2")) == 0
    second = json.loads((out / "last" / "train_log.json").read_text())
    assert second["log"][-1]["step"] > steps
    assert [r["from_step"] for r in second["runs"]] == [0, steps]
    assert second["runs"][1]["args"]["seed"] == "2"

    dest = tmp_path / "exported"
    assert train_marian.main(tiny(corpus, out, "--export", str(dest), "--export-from", "last")) == 0
    from transformers import BlenderbotSmallForConditionalGeneration

    model = BlenderbotSmallForConditionalGeneration.from_pretrained(dest)
    assert sum(p.numel() for p in model.parameters()) < 100_000
    assert json.loads((dest / "training.json").read_text())["log"][-1]["step"] == second["log"][-1]["step"]
