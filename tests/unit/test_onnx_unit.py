"""ONNX export / ONNX Runtime engine checks that need no exported model (fast)."""

from __future__ import annotations

import json

import pytest

from testbed.config import PRECISIONS, EngineConfig
from testbed.errors import ConfigError

ort = pytest.importorskip("onnxruntime")


class _FakeSession:
    def __init__(self, providers: list[str]) -> None:
        self._p = providers

    def get_providers(self) -> list[str]:
        return self._p


def test_silent_cpu_fallback_is_detected():
    from testbed.engines.onnxruntime.runner import ProviderFallbackError, check_providers

    with pytest.raises(ProviderFallbackError, match="did not load CUDAExecutionProvider.*CPUExecutionProvider"):
        check_providers(_FakeSession(["CPUExecutionProvider"]), "CUDAExecutionProvider")
    with pytest.raises(ProviderFallbackError, match="TensorrtExecutionProvider"):
        check_providers(_FakeSession(["CUDAExecutionProvider", "CPUExecutionProvider"]), "TensorrtExecutionProvider")
    check_providers(_FakeSession(["CUDAExecutionProvider", "CPUExecutionProvider"]), "CUDAExecutionProvider")


def test_gpu_provider_missing_from_the_build_is_refused(tmp_path):
    from testbed.engines.onnxruntime.runner import ProviderFallbackError, SessionSettings, make_session

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    with pytest.raises(ProviderFallbackError, match="not available in this onnxruntime build"):
        make_session(tmp_path / "x.onnx", SessionSettings(provider="CUDAExecutionProvider"))


@pytest.mark.parametrize("precision", ["fp16"])
def test_gpu_precision_on_cpu_says_why_not(precision):
    from testbed.engines.registry import create_engine

    with pytest.raises(ConfigError, match=r"fp16 on engine onnxruntime needs device cuda"):
        create_engine(EngineConfig(engine="onnxruntime", precision=precision, device="cpu"), load=False)


def test_cpu_int8_on_cuda_refused_and_static_int8_is_onnx_only():
    from testbed.engines.registry import create_engine

    assert "int8-static" in PRECISIONS
    with pytest.raises(ConfigError, match="needs device cpu"):
        create_engine(EngineConfig(engine="onnxruntime", precision="int8-static", device="cuda"), load=False)
    with pytest.raises(ConfigError, match="engine torch"):
        create_engine(EngineConfig(engine="torch", precision="int8-static"), load=False)


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    from testbed.export.onnx_export import ensure_onnx

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ConfigError, match=r"model_type bert.*marian \(seq2seq, model_type marian\).*llama \(causal"):
        ensure_onnx(str(tmp_path), "fp32", root=tmp_path / "cache")


def test_unknown_format_and_precision_are_refused():
    from testbed.export import export
    from testbed.export.onnx_export import ensure_onnx

    with pytest.raises(ConfigError, match="format='tflite'.*onnx"):
        export("marian-en-de", "tflite", "fp32")
    with pytest.raises(ConfigError, match="fp32, int8, int8-static, int8-auto, int4-lossless, fp16"):
        ensure_onnx("marian-en-de", "bf16")


def test_trt_engine_is_cuda_only():
    from testbed.engines.registry import create_engine

    with pytest.raises(ConfigError, match="device='cpu'"):
        create_engine(EngineConfig(engine="onnxruntime-trt", device="cpu"), load=False)
