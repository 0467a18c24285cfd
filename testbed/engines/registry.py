"""Engine registry: name -> "module:Class", imported lazily.

Adding an engine touches its own folder and one line here.  ``import testbed`` imports no
runtime; an unknown name lists the known ones; a missing runtime names the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from testbed.clock import Clock, now_ns
from testbed.config import EngineConfig
from testbed.engines.base import Engine
from testbed.errors import ConfigError, MissingExtraError


@dataclass(frozen=True)
class EngineEntry:
    target: str  # "module:Class"
    extra: str | None  # the pip extra that installs its runtime (None: default install)
    module: str  # the runtime module whose absence means the extra is missing
    description: str


ENGINES: dict[str, EngineEntry] = {
    "torch": EngineEntry("testbed.engines.torch.engine:TorchEngine", None, "torch",
                         "PyTorch eager, KV cache; fp32, bf16, fp16 (CUDA), dynamic int8 (CPU)"),
    "torch-static": EngineEntry("testbed.engines.torch.static:TorchStaticEngine", None, "torch",
                                "PyTorch, static KV cache, single stream; step eager (CPU) or a CUDA graph (CUDA); "
                                "fp32, bf16, fp16 / fp8 (CUDA), int8 (torch._int_mm)"),
    "torch-compile": EngineEntry("testbed.engines.torch.static:TorchCompileEngine", None, "torch",
                                 "torch-static with the step through torch.compile (CUDA: reduce-overhead)"),
    "onnxruntime": EngineEntry("testbed.engines.onnxruntime.engine:OnnxRuntimeEngine", "onnx", "onnxruntime",
                               "ONNX Runtime, exported graphs with KV cache; fp32, int8 / int8-static / int8-auto / "
                               "int4-lossless (CPU), fp16 (CUDA)"),
    "onnxruntime-trt": EngineEntry("testbed.engines.onnxruntime.engine:OnnxRuntimeTensorRTEngine", "gpu",
                                   "onnxruntime", "ONNX Runtime TensorRT execution provider; fp32, fp16 (CUDA)"),
    "fake": EngineEntry("testbed.engines.fake.engine:FakeEngine", None, "testbed",
                        "no model: echoes the input's words (tests, and the floor of each path)"),
    "null": EngineEntry("testbed.engines.fake.engine:NullEngine", None, "testbed",
                        "no model, no work: exactly max_new_tokens tokens per request (calibrates a path's floor)"),
    "ctranslate2": EngineEntry("testbed.engines.ctranslate2.engine:CTranslate2Engine", "ctranslate2",
                               "ctranslate2", "CTranslate2, converted once (cached); fp32, int8 (CPU); "
                               "fp16, bf16, int8_float16 (CUDA)"),
}


def engine_names() -> list[str]:
    return list(ENGINES)


def engine_class(name: str) -> type[Engine]:
    entry = ENGINES.get(name)
    if entry is None:
        raise ConfigError("engine", name, ", ".join(ENGINES))
    if importlib.util.find_spec(entry.module) is None:
        raise MissingExtraError(f"engine {name!r}", entry.extra or "default", entry.module)
    mod_name, cls_name = entry.target.split(":")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    return cls  # type: ignore[no-any-return]


def is_available(name: str) -> tuple[bool, str]:
    """(available, reason) without importing the runtime: for UIs and sweeps."""
    entry = ENGINES.get(name)
    if entry is None:
        return False, f"unknown engine; known: {', '.join(ENGINES)}"
    if importlib.util.find_spec(entry.module) is None:
        return False, f"needs pip install 'testbed[{entry.extra}]'"
    return True, ""


def create_engine(config: EngineConfig, clock: Clock = now_ns, load: bool = True) -> Engine:
    """Validate ``config`` against the engine's capabilities, build it, and (by default) load it."""
    engine = engine_class(config.engine)(config, clock=clock)
    return engine.load() if load else engine
