"""Sweep files: validation errors name the file, the field, the value and what is allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testbed.eval.sweep import SweepError, builtin_sweeps, load_sweep, parse_sweep

BASE = """
model = "fake-en-de"
dataset = "{data}"
max_new_tokens = 16
[offline]
num_examples = 4
[singlestream]
num_requests = 2
warmup = 1
[reference]
engine = "fake"
[defaults]
threads = 1
batch = 2
"""


@pytest.fixture
def data(tmp_path: Path) -> Path:
    p = tmp_path / "set.tsv"
    p.write_text("".join(f"source {i}\treference {i}\n" for i in range(6)), encoding="utf-8")
    return p


def write(tmp_path: Path, data: Path, extra: str, base: str = BASE, top: str = "") -> Path:
    p = tmp_path / "sweep.toml"
    p.write_text(top + base.format(data=data.as_posix()) + extra, encoding="utf-8")
    return p


def test_matrix_expands_reference_first_and_deduplicated(tmp_path, data):
    p = write(tmp_path, data, '[[configs]]\nengine = "fake"\nprecision = ["fp32", "int8"]\nbatch = [2, 4]\n')
    s = load_sweep(p)
    labels = [c.label() for c in s.configs]
    assert labels[0] == "fake/fp32/cpu/t1/b2" and s.configs[0] == s.reference
    assert labels == ["fake/fp32/cpu/t1/b2", "fake/fp32/cpu/t1/b4", "fake/int8/cpu/t1/b2", "fake/int8/cpu/t1/b4"]
    assert len(s.offline_set) == 4 and len(s.singlestream_set) == 2
    assert len({s.key(c) for c in s.configs}) == 4


def test_keys_depend_on_config_and_shared_settings_only(tmp_path, data):
    a = load_sweep(write(tmp_path, data, '[[configs]]\nengine = "fake"\nprecision = ["fp32", "int8"]\n'))
    b = load_sweep(write(tmp_path, data, '[[configs]]\nengine = "fake"\nprecision = "int8"\n'))
    assert a.sweep_key == b.sweep_key and a.key(a.configs[1]) == b.key(b.configs[1])
    c = load_sweep(write(tmp_path, data, '[[configs]]\nengine = "fake"\n', base=BASE.replace("= 16", "= 17")))
    assert c.sweep_key != a.sweep_key and c.key(c.configs[0]) != a.key(a.configs[0])


@pytest.mark.parametrize("extra, match", [
    ('[[configs]]\nengine = "fake"\nprecison = "fp32"\n', r"unknown key configs\[0\].'precison'; allowed: engine"),
    ('[[configs]]\nengine = "fake"\nprecision = "fp33"\n', r"configs\[0\]: precision='fp33' is not supported; allowed"),
    ('[[configs]]\nengine = "fake"\nthreads = 0\n', r"configs\[0\].threads = 0 is not valid; allowed: an integer >= 1"),
    ('[[configs]]\nengine = "fake"\nbatch = "big"\n', r"configs\[0\].batch = 'big' is not valid; allowed: an integer"),
    ('[[configs]]\nengine = "fake"\nprecision = []\n', r"configs\[0\].precision = \[\] is not valid"),
    ('[[configs]]\nengine = "fake"\npruning = "half"\n', r"pruning='half' is not supported; allowed: none"),
    ('[[configs]]\nengine = "fake"\ndevice = "tpu"\n', r"device='tpu' is not supported; allowed: cpu, cuda"),
    ('[[configs]]\nengine = "torch"\nprecision = "fp16"\n', r"precision='fp16' is not supported; allowed: on cpu"),
])
def test_bad_keys_and_values_name_field_value_and_allowed(tmp_path, data, extra, match):
    with pytest.raises(SweepError, match=match) as exc:
        load_sweep(write(tmp_path, data, extra))
    assert str(tmp_path / "sweep.toml") in str(exc.value)


@pytest.mark.parametrize("base_edit, match", [
    (("num_examples = 4", "num_examples = 7"), r"offline.num_examples = 7 is not valid; allowed: at most"),
    (("warmup = 1", "warmup = -1"), r"singlestream.warmup = -1 is not valid; allowed: an integer >= 0"),
    (("max_new_tokens = 16", "max_new_tokens = 0"), r"max_new_tokens = 0 is not valid; allowed: an integer in"),
    (("[reference]", "[reference]\nbatch = [1, 2]"), r"\[reference\] takes one value per key"),
    (("[offline]", "[offline]\nsize = 3"), r"unknown key offline.'size'; allowed in \[offline\]: num_examples"),
    (("[reference]", "[accuracy]\ngate_metric = \"rouge\"\n[reference]"),
     r"accuracy.gate_metric = 'rouge' is not valid; allowed: bleu, chrf"),
    (("[reference]", "[accuracy]\ngate_reference = \"humans\"\n[reference]"),
     r"accuracy.gate_reference = 'humans' is not valid; allowed: references .* or fp32"),
    (("[reference]", "[accuracy]\ngate_ratio = 1.5\n[reference]"),
     r"accuracy.gate_ratio = 1.5 is not valid; allowed: a number in \(0, 1\]"),
    (("[reference]", "[accuracy]\ngate_ratio = 0.9\ngate_bleu_ratio = 0.9\n[reference]"),
     r"gate_bleu_ratio is the old name of accuracy.gate_ratio: give one"),
    (("[reference]", "[accuracy]\ndivergence_examples = -1\n[reference]"),
     r"accuracy.divergence_examples = -1 is not valid; allowed: an integer >= 0"),
    (("warmup = 1", "warmup = 1\ninterleave = \"yes\""),
     r"singlestream.interleave = 'yes' is not valid; allowed: true"),
    (("[offline]", "[offline]\nwarmup_batches = -2"), r"offline.warmup_batches = -2 is not valid"),
])
def test_bad_tables(tmp_path, data, base_edit, match):
    with pytest.raises(SweepError, match=match):
        load_sweep(write(tmp_path, data, '[[configs]]\nengine = "fake"\n', base=BASE.replace(*base_edit)))


def test_unknown_top_level_key(tmp_path, data):
    with pytest.raises(SweepError, match=r"unknown key 'colour'; allowed: name, description, model"):
        load_sweep(write(tmp_path, data, '[[configs]]\nengine = "fake"\n', top='colour = "blue"\n'))


def test_empty_sweep_is_refused(tmp_path, data):
    with pytest.raises(SweepError, match="the sweep has no configurations: add at least one"):
        load_sweep(write(tmp_path, data, ""))


def test_missing_test_file(tmp_path, data):
    with pytest.raises(SweepError, match=r"dataset = '.*nowhere.tsv'.*not found: give one of test, dev, chat"):
        load_sweep(write(tmp_path, tmp_path / "nowhere.tsv", '[[configs]]\nengine = "fake"\n'))


@pytest.mark.parametrize("name,content,match", [
    (None, None, r"dataset = '/etc/passwd': dataset '/etc/passwd' is not a test set file \(suffix 'none'\): give "
                 r"one of test, dev, chat or a path to a .tsv, .txt or .jsonl file"),
    ("set.csv", b"a,b\n", r"not a test set file \(suffix '.csv'\)"),
    ("latin.tsv", "caf\xe9\tCaf\xe9\n".encode("latin-1"), r"is not UTF-8 text \(byte 3\)"),
    ("bad.jsonl", b'{"text": "a"}\n[1]\n', r"bad.jsonl:2: each line needs a 'text' or a 'messages' field"),
])
def test_a_file_that_is_not_a_test_set_is_refused_at_validation(tmp_path, name, content, match):
    # issue 15: dataset = "/etc/passwd" was read as a test set of one sentence per line
    path = Path("/etc/passwd") if name is None else tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SweepError, match=match):
        load_sweep(write(tmp_path, path, '[[configs]]\nengine = "fake"\n'))


def test_missing_sweep_file_names_the_shipped_ones():
    with pytest.raises(SweepError, match="not found.*default"):
        load_sweep("no-such-sweep.toml")


def test_invalid_toml(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("engine = [\n", encoding="utf-8")
    with pytest.raises(SweepError, match="not valid TOML"):
        load_sweep(p)


def test_references_file_count_must_match(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("one\ntwo\nthree\n", encoding="utf-8")
    (tmp_path / "refs.txt").write_text("eins\nzwei\n", encoding="utf-8")
    extra, top = '[[configs]]\nengine = "fake"\n', 'references = "refs.txt"\n'
    base = BASE.replace("num_examples = 4", "num_examples = 3")
    with pytest.raises(SweepError, match="refs.txt' has 2 lines but the dataset has 3 examples: they must pair"):
        load_sweep(write(tmp_path, src, extra, base=base, top=top))
    (tmp_path / "refs.txt").write_text("eins\nzwei\ndrei\n", encoding="utf-8")
    s = load_sweep(write(tmp_path, src, extra, base=base, top=top))
    assert [e.reference for e in s.examples] == ["eins", "zwei", "drei"]


def test_an_unregistered_engine_is_refused_at_validation(tmp_path, data):
    # issue 15: engine = "vllm" was accepted and only found out when its row ran
    with pytest.raises(SweepError, match=r"configs\[0\]\.engine = 'vllm' is not valid; allowed: one of the "
                                         r"registered engines: torch, torch-static, torch-compile, onnxruntime"):
        load_sweep(write(tmp_path, data, '[[configs]]\nengine = "vllm"\n'))
    with pytest.raises(SweepError, match=r"reference\.engine = 'vllm'"):
        load_sweep(write(tmp_path, data, '[[configs]]\nengine = "fake"\n',
                         base=BASE.replace('engine = "fake"', 'engine = "vllm"')))


def test_a_registered_engine_that_is_not_installed_is_skipped_not_refused(tmp_path, data, monkeypatch):
    from testbed.engines import registry

    monkeypatch.setattr(registry, "is_available", lambda name: (name != "ctranslate2", "needs an extra"))
    s = load_sweep(write(tmp_path, data, '[[configs]]\nengine = "ctranslate2"\nprecision = "int8-static"\n'))
    assert s.configs[-1].engine == "ctranslate2" and s.configs[-1].precision == "int8-static"


def test_shipped_sweeps_validate():
    assert {"default", "chat"} <= set(builtin_sweeps())
    d = load_sweep("default")
    assert d.model == "marian-en-de" and d.configs[0] == d.reference
    assert d.reference.precision == "fp32" and d.reference.engine == "torch"
    engines = {c.engine for c in d.configs}
    assert {"torch", "onnxruntime", "ctranslate2"} <= engines
    assert any(c.pruning != "none" for c in d.configs)
    assert d.offline_examples == len(d.examples) == 1200  # the whole test set for accuracy
    assert d.interleave and d.offline_warmup_batches == 1 and d.gate_reference == "references"
    chat = load_sweep("chat")
    assert chat.model == "smollm2-135m-instruct" and chat.examples[0].messages
    assert chat.gate_reference == "fp32" and chat.gated_against == "fp32" and chat.offline_examples >= 300
    assert {"torch", "onnxruntime", "ctranslate2"} <= {c.engine for c in chat.configs}


def test_parse_sweep_dict_defaults_threads_to_cores(data):
    s = parse_sweep({"model": "fake-en-de", "dataset": str(data), "reference": {"engine": "fake"},
                     "configs": [{"engine": "fake"}]}, "mem")
    assert s.reference.threads == (os.cpu_count() or 1)
    assert s.offline_examples == 6 and s.singlestream_requests == 6
    assert len(s.divergence_set) == 6 and s.gate_ratio == 0.99 and s.interleave is True


def test_old_gate_bleu_ratio_name_is_read_and_interleave_is_in_the_key(data):
    base = {"model": "fake-en-de", "dataset": str(data), "reference": {"engine": "fake"},
            "configs": [{"engine": "fake"}]}
    s = parse_sweep({**base, "accuracy": {"gate_bleu_ratio": 0.999}}, "mem")
    assert s.gate_ratio == 0.999
    import dataclasses

    assert dataclasses.replace(s, interleave=False).sweep_key != s.sweep_key


def test_language_keys_are_validated_and_keyed_only_when_set(tmp_path, data):
    """src_lang / tgt_lang: one pair for the sweep's model, passed to every row's EngineConfig; a
    value that is not a language code is refused naming the field; unset, the keys are unchanged."""
    plain = load_sweep(write(tmp_path, data, '[[configs]]\nengine = "fake"\n'))
    with_langs = load_sweep(write(tmp_path, data, '[[configs]]\nengine = "fake"\n',
                                  top='src_lang = "eng_Latn"\ntgt_lang = "deu_Latn"\n'))
    assert (with_langs.src_lang, with_langs.tgt_lang) == ("eng_Latn", "deu_Latn")
    ec = with_langs.reference.engine_config(with_langs.model, 16, with_langs.src_lang, with_langs.tgt_lang)
    assert (ec.src_lang, ec.tgt_lang) == ("eng_Latn", "deu_Latn")
    assert "src_lang" not in plain.settings() and plain.sweep_key != with_langs.sweep_key
    for bad, match in (('tgt_lang = 7\n', r"tgt_lang = 7 is not valid; allowed: a language code"),
                       ('src_lang = "en glish"\n', r"src_lang = 'en glish' is not valid")):
        with pytest.raises(SweepError, match=match):
            load_sweep(write(tmp_path, data, '[[configs]]\nengine = "fake"\n', top=bad))
