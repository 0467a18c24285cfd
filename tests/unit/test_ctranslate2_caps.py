"""CTranslate2 engine: what it refuses before loading anything (no model, no runtime import)."""

from __future__ import annotations

import pytest

from testbed.config import EngineConfig
from testbed.engines.registry import ENGINES, create_engine
from testbed.errors import ConfigError


@pytest.mark.parametrize("precision", ["fp16", "bf16", "int8_float16"])
def test_gpu_precisions_are_refused_on_cpu_with_the_reason(precision):
    with pytest.raises(ConfigError) as e:
        create_engine(EngineConfig(engine="ctranslate2", precision=precision), load=False)
    msg = str(e.value)
    assert "needs device cuda" in msg and "fp32, int8" in msg, msg


def test_int8_is_a_cpu_precision_and_unknown_precisions_name_the_accepted_ones():
    with pytest.raises(ConfigError, match="int8 on engine ctranslate2 needs device cpu"):
        create_engine(EngineConfig(engine="ctranslate2", precision="int8", device="cuda"), load=False)
    with pytest.raises(ConfigError,
                       match="allowed: fp32, bf16, fp16, int8, int8-static, int8-auto, int4-lossless, int8_float16"):
        EngineConfig(engine="ctranslate2", precision="int4")


def test_registered_with_its_extra_and_runs_pruned_models():
    assert ENGINES["ctranslate2"].extra == "ctranslate2"
    eng = create_engine(EngineConfig(engine="ctranslate2", pruning="structured:0.5"), load=False)
    assert eng.capabilities.pruning and eng.capabilities.streaming
    # torch refuses the CTranslate2-only precision
    with pytest.raises(ConfigError, match="precision"):
        create_engine(EngineConfig(precision="int8_float16", device="cuda"), load=False)
