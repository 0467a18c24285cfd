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
