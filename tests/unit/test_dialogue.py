"""The embedded dialogue model: its data split (by conversation), its tokenizer shortcut, its registry
entry and the sweep that compares it with SmolLM2 (a configuration of another model, not gated)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from testbed.eval.runner import run_sweep
from testbed.eval.sweep import load_sweep

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "models" / "recipe"))

import build_dialogue  # noqa: E402
import dialogue_arch  # noqa: E402
import dialogue_examples  # noqa: E402


def _conversation(cid: str, n_turns: int) -> dict:
    words = ["hello there how are you doing", "i am fine thanks and you today", "pretty good just got home now",
             "what did you eat for dinner", "pizza with my friends it was great"]
    return {"messages": [[{"text": f"{words[i % len(words)]} {cid[:4]}", "sender": "ab"[i % 2]}]
                         for i in range(n_turns)]}


def test_reply_stats_count_distinct_replies_and_replies_on_the_last_turns_topic():
    from testbed.datasets import Example

    ex = [Example(id=str(i), messages=({"role": "user", "content": "i went to the beach"},
                                       {"role": "assistant", "content": f"do you like {w}?"}))
          for i, w in enumerate(["pizza", "movies", "dogs", "music"])]
    # a collapsed model: one reply for every prompt, on topic by no measure
    assert dialogue_examples.reply_stats(ex, ["i'm not sure"] * 4) == {"distinct_replies": 1, "on_topic_rate": 0.0}
    # on topic = repeats a content word of the *last* turn (not of earlier turns, not a stop word)
    replies = ["i love pizza", "movies are fun", "the beach was nice", "i like it"]
    assert dialogue_examples.reply_stats(ex, replies) == {"distinct_replies": 4, "on_topic_rate": 0.5}


def test_split_is_by_conversation():
    data = {f"c{i:03d}": _conversation(f"c{i:03d}", 2 + i % 5) for i in range(60)}
    data["c999"] = _conversation("c999", 1)  # one turn: no pair, in no split's rows
    test_ids = {f"c{i:03d}" for i in range(0, 60, 6)}
    s = build_dialogue.split(data, test_ids, dev_n=8, seed=3)
    dev, test, train = set(s["dev_ids"]), set(s["test_ids"]), set(s["train_ids"])
    assert len(dev) == 8 and test == test_ids
    assert not (dev & test) and not (dev & train) and not (test & train)
    assert dev | test | train == set(data)
    row_convs = {r[0].split(":")[0] for r in s["train_rows"]}
    assert row_convs and row_convs <= train
    assert {r["source"].rsplit(" ", 1)[-1] for r in s["dev_rows"]} == dev
    # every turn after the first of a training conversation is a reply, its context the turns before it
    assert len(s["train_rows"]) == sum(len(data[c]["messages"]) - 1 for c in train)
    for rid, context, reply in s["train_rows"]:
        cid, i = rid.split(":")
        turns = [t[0]["text"] for t in data[cid]["messages"]]
        assert reply == turns[int(i)] and context.endswith(turns[int(i) - 1])


def test_committed_dev_set_shares_no_conversation_with_the_test_set():
    dev = {json.loads(line)["source"] for line in (REPO / "eval/data/dialogue_dev.jsonl").read_text().splitlines()}
    assert len(dev) == 300
    assert not dev & {"chitchat-dataset 0.9.0 conversation " + c for c in build_dialogue.test_conversations()}


def test_context_keeps_the_last_words():
    long = " ".join(f"w{i}" for i in range(100))
    assert build_dialogue.join_context(["a b", "c"]) == "a b  c"  # testbed's BlenderBot turn separator
    assert build_dialogue.join_context([long, "end"]).split() == [f"w{i}" for i in range(37, 100)] + ["end"]


def test_fast_encoder_matches_the_tokenizer(tmp_path):
    rows = [("Hi, how are you doing today?", "I'm fine. What about you?"),
            ("Do you like (old) movies!", "Yes. My dad's favourite is Casablanca, y'know")] * 5
    dialogue_arch.build_vocab(rows, tmp_path, 120)
    tok = dialogue_arch.make_tokenizer(tmp_path)
    fast = dialogue_arch.FastEncoder(tok)
    texts = [t for r in rows for t in r] + ["unseen WORDS, here?!", "  spaced   out\nlines "]
    fast.check(texts, 64)  # raises on any difference
    assert fast(texts[0], 64) == tok(texts[0])["input_ids"] and len(fast(texts[0], 3)) == 3
    assert dialogue_arch.with_eos([5, 6], tok.eos_token_id)[-1] == tok.eos_token_id


def test_registry_entry_is_the_committed_blenderbot_small_checkpoint():
    from testbed.registry import EMBEDDED, resolve_model
    from testbed.spec import load_spec

    info = resolve_model("chitchat-bbs-10m")
    assert info is EMBEDDED["chitchat-bbs-10m"] and info.task == "chat" and info.architecture == "seq2seq"
    path = info.local_path()
    assert path == REPO / "models" / "chitchat-bbs-10m"
    assert json.loads((path / "config.json").read_text())["model_type"] == "blenderbot-small"
    spec, tok = load_spec(path)
    assert spec.family == "blenderbot-small" and spec.task == "chat" and not spec.chat_template
    assert type(tok).__name__ == "BlenderbotSmallTokenizer" and spec.decoder_start_token_id == tok.bos_token_id
    assert (path / "model.safetensors").stat().st_size <= 40 * 2**20


def test_shipped_dialogue_sweep_validates_and_names_smollm2_for_one_row():
    sweep = load_sweep("dialogue")
    assert sweep.model == "chitchat-bbs-10m" and sweep.dataset == "chat" and sweep.has_references
    others = [c for c in sweep.configs if c.model]
    assert [c.model for c in others] == ["smollm2-135m-instruct"]
    own = {(c.engine, c.precision) for c in sweep.configs if not c.model}  # every engine runs the dialogue model
    assert {("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("ctranslate2", "int8"), ("torch", "int8")} <= own
    assert others[0].engine_config(sweep.model, 32).model == "smollm2-135m-instruct"
    assert sweep.reference.model == "" and sweep.reference.engine_config(sweep.model, 32).model == "chitchat-bbs-10m"
    assert others[0].label().startswith("smollm2-135m-instruct:torch/fp32/")
    assert "model" not in sweep.reference.to_dict() and others[0].to_dict()["model"] == "smollm2-135m-instruct"


def _fake_sweep(tmp_path: Path) -> Path:
    data = tmp_path / "set.tsv"
    sents = ["open the file menu", "select the cells", "press enter now", "the dialog closes"]
    data.write_text("".join(f"d\t{s}\t{s}\n" for s in sents), encoding="utf-8")
    p = tmp_path / "sweep.toml"
    p.write_text('name = "t"\nmodel = "fake-en-de"\ndataset = "set.tsv"\nmax_new_tokens = 16\n'
                 "[offline]\nnum_examples = 4\n[singlestream]\nnum_requests = 2\nwarmup = 0\n"
                 '[accuracy]\nbootstrap_samples = 10\n[reference]\nengine = "fake"\n'
                 '[defaults]\nthreads = 1\nbatch = 2\n[[configs]]\nengine = "fake"\n'
                 '[[configs]]\nengine = "fake"\nmodel = "fake-other"\n'
                 '[[configs]]\nengine = "fake"\nmodel = "fake-en-de"\nprecision = "int8"\n', encoding="utf-8")
    return p


def test_a_configuration_of_another_model_is_scored_but_not_gated(tmp_path):
    sweep = load_sweep(_fake_sweep(tmp_path))
    rows = {r["label"]: r for r in run_sweep(sweep, tmp_path / "run", progress=False)}
    assert set(rows) == {"fake/fp32/cpu/t1/b2", "fake-other:fake/fp32/cpu/t1/b2", "fake/int8/cpu/t1/b2"}
    other = rows["fake-other:fake/fp32/cpu/t1/b2"]
    assert other["status"] == "ok" and other["signature"]["model_id"].startswith("fake:fake-other@")
    assert other["accuracy"]["vs_references"]["bleu"] == pytest.approx(100.0)  # the echo engine copies
    assert other["gate"]["passed"] is None and other["accuracy"]["vs_fp32"] is None
    assert other["gate"]["reasons"][0].startswith("not gated: fake-other is another model")
    assert rows["fake/int8/cpu/t1/b2"]["gate"]["passed"] is True  # the sweep's own model: gated as before
    assert "model" not in rows["fake/int8/cpu/t1/b2"]["config"]
    assert other["singlestream"]["completed"] == 2
