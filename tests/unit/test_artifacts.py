import json

import pytest

from testbed import artifacts as A


def _builder(calls):
    def build(d):
        calls.append(d)
        (d / "model.bin").write_bytes(b"weights")
        (d / "sub").mkdir()
        (d / "sub" / "vocab.txt").write_text("a b")
        return {"exporter": "test"}
    return build


def test_build_reuses_verified_artifact_and_rebuilds_corrupt_one(tmp_path):
    calls: list = []
    key = {"model": "m@abc", "precision": "int8"}
    d1 = A.build("onnx", "m", key, _builder(calls), root=tmp_path, log=lambda m: None)
    m = json.loads((d1 / A.MANIFEST).read_text())
    assert m["key"] == key and m["exporter"] == "test" and set(m["files"]) == {"model.bin", "sub/vocab.txt"}
    assert A.build("onnx", "m", key, _builder(calls), root=tmp_path) == d1 and len(calls) == 1
    # a different key is a different artefact
    d2 = A.build("onnx", "m", {**key, "precision": "fp32"}, _builder(calls), root=tmp_path)
    assert d2 != d1 and len(calls) == 2
    # corruption is detected and the artefact rebuilt, with a message saying why
    (d1 / "model.bin").write_bytes(b"tampered")
    said: list[str] = []
    with pytest.raises(A.ArtifactError, match="model.bin"):
        A.verify(d1, key)
    assert A.build("onnx", "m", key, _builder(calls), root=tmp_path, log=said.append) == d1
    assert len(calls) == 3 and "model.bin" in said[0]
    assert A.verify(d1, key)["key"] == key
    with pytest.raises(A.ArtifactError, match="different key"):
        A.verify(d1, {"model": "other"})


def test_failed_build_leaves_nothing_and_export_refuses_overwrite(tmp_path):
    def boom(d):
        (d / "half.bin").write_bytes(b"x")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError):
        A.build("onnx", "m", {"k": 1}, boom, root=tmp_path)
    left = [p.name for p in (tmp_path / "artifacts" / "onnx").iterdir() if not p.name.endswith(".lock")]
    assert left == []
    d = A.build("onnx", "m", {"k": 1}, _builder([]), root=tmp_path)
    out = tmp_path / "out"
    A.export_to(d, out)
    with pytest.raises(A.ArtifactError, match="--force"):
        A.export_to(d, out)
    A.export_to(d, out, force=True)
    assert A.verify(out)["key"] == {"k": 1}


def test_builders_resolve_and_an_unknown_one_is_refused():
    from testbed.errors import ConfigError

    for name, target in A.BUILDERS.items():
        mod, fn = target.split(":")
        assert A.builder(name).__module__ == mod and A.builder(name).__name__ == fn, name
    with pytest.raises(ConfigError, match="format='tflite'.*onnx, ctranslate2"):
        A.builder("tflite")


@pytest.mark.parametrize("engine,precision,pruning,builder", [
    ("onnxruntime", "int8", "none", "onnx"),
    ("onnxruntime", "fp32", "unstructured:0.5", "onnx"),
    ("ctranslate2", "int8", "none", "ctranslate2"),
])
def test_an_engine_gets_its_artifact_through_the_pipeline(monkeypatch, tmp_path, engine, precision, pruning, builder):
    """The engine names its builder; testbed.artifacts dispatches (no engine imports a builder)."""
    from testbed.config import EngineConfig
    from testbed.engines.registry import create_engine, is_available

    if not is_available(engine)[0]:
        pytest.skip(is_available(engine)[1])
    calls = []

    def fake(name):
        return lambda info, prec, prun, **kw: calls.append((name, info.name, prec, prun, kw)) or tmp_path

    monkeypatch.setattr(A, "builder", fake)
    eng = create_engine(EngineConfig(engine=engine, precision=precision, pruning=pruning), load=False)
    assert eng._artifact() == tmp_path
    assert calls == [(builder, "marian-en-de", precision, pruning, {})]
