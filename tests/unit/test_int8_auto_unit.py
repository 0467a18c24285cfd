"""int8-auto settings and precision checks that need no model (fast)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testbed.config import EngineConfig
from testbed.errors import ConfigError
from testbed.export.int8_auto import SearchSettings, int8_isa, parse_search, search_key


def test_settings_parse_and_land_in_the_cache_key():
    s = parse_search("max_excluded=2, dev_sentences=300,gate_ratio=0.98")
    assert (s.max_excluded, s.dev_sentences, s.gate_ratio) == (2, 300, 0.98)
    assert parse_search("") == parse_search(None) == SearchSettings()
    key = search_key(s)
    assert key["max_excluded"] == 2 and key["dataset"] == "dev" and key["int8_isa"] == int8_isa()
    assert search_key(s) != search_key(SearchSettings())


@pytest.mark.parametrize(("spec", "match"), [
    ("max_excluded=-1", r"int8-auto max_excluded=-1 is not supported; allowed: an integer >= 0"),
    ("dev_sentences=0", r"int8-auto dev_sentences=0 .*a positive integer"),
    ("gate_ratio=1.5", r"int8-auto gate_ratio=1.5 .*a number in \[0, 1\]"),
    ("min_fidelity=101", r"int8-auto min_fidelity=101.0 .*a number in \[0, 100\]"),
    ("gate_ratio=high", r"int8-auto gate_ratio='high' .*a number"),
    ("length_low=1.2", r"length bounds.*0 < length_low <= 1 <= length_high"),
    ("max_exclude=2", r"int8-auto setting='max_exclude=2' .*allowed: dev_sentences=VALUE, .*max_excluded=VALUE"),
    ("max_excluded", r"int8-auto setting='max_excluded'"),
])
def test_bad_settings_are_refused_naming_the_field(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_search(spec)


def test_the_cli_refuses_a_bad_setting_before_building():
    r = subprocess.run([sys.executable, "-m", "testbed", "export", "--precision", "int8-auto",
                        "--int8-auto", "batch=many"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "int8-auto batch='many' is not supported; allowed: a number" in r.stderr


def test_int8_auto_is_an_onnxruntime_cpu_precision():
    from testbed.engines.registry import create_engine

    create_engine(EngineConfig(engine="onnxruntime", precision="int8-auto"), load=False)
    with pytest.raises(ConfigError, match="int8-auto on engine onnxruntime needs device cpu"):
        create_engine(EngineConfig(engine="onnxruntime", precision="int8-auto", device="cuda"), load=False)
    with pytest.raises(ConfigError, match="engine torch"):
        create_engine(EngineConfig(engine="torch", precision="int8-auto"), load=False)


class _BatchRecorder:
    """An engine stand-in that records the batches it is given (decode_dev only calls generate)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def generate(self, texts):
        from testbed.engines.types import Generation

        self.batches.append(list(texts))
        return [Generation([1, 2], t.upper(), 1, "eos") for t in texts]


def test_batch_compositions_shift_the_batch_boundaries_and_keep_every_sentence_once():
    from testbed.export.int8_auto import decode_dev

    texts = ["x" * (70 - i) for i in range(70)]  # sorted by length: reversed
    plain, shifted = _BatchRecorder(), _BatchRecorder()
    out = decode_dev(plain, texts, 32)
    assert [len(b) for b in plain.batches] == [32, 32, 6]
    assert decode_dev(shifted, texts, 32, shift=16) == out == [(t.upper(), 2) for t in texts]
    assert [len(b) for b in shifted.batches] == [16, 32, 22]
    assert shifted.batches[0] == sorted(texts, key=len)[:16]


def test_compositions_and_the_weight_only_block_enter_the_key():
    key = search_key(SearchSettings())
    assert key["compositions"] == 2 and key["version"] == 2 and key["weight_only_block"] == 32
    assert ["weight-only", False, False] in key["options"]
    assert search_key(parse_search("compositions=3"))["compositions"] == 3
    assert search_key(parse_search("refine=0")) != key
    with pytest.raises(ConfigError, match="int8-auto compositions=0"):
        parse_search("compositions=0")


def test_speed_ties_go_to_the_most_faithful_candidate_not_the_first():
    from testbed.export.int8_auto import TIE, choose

    def c(ms, fid, groups=()):
        return {"median_ms_batch1": ms, "fidelity": fid, "fp32_groups": list(groups)}

    plain, rr, slow = c(10.0, 90.0), c(10.0 * (1 + TIE / 2), 95.0), c(10.0 * (1 + 2 * TIE), 99.0)
    assert choose([plain, rr, slow]) is rr  # rr ties on speed and is more faithful; slow is out of the tie
    assert choose([plain, slow]) is plain
    same = c(10.0, 95.0, ["lm_head"])
    assert choose([same, rr]) is rr  # equal fidelity: fewer fp32 groups
    first, second = c(10.0, 90.0), c(10.0, 90.0)
    assert choose([first, second]) is first  # a full tie: the option order
