"""bench/engines.py end to end on a few sentences: all configurations in one process (the default) and each in
its own (--isolate), the same rows, the same outputs, the header saying which."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("ctranslate2")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp: Path, *extra: str) -> str:
    cmd = [sys.executable, str(ROOT / "bench" / "engines.py"), "--task", "translation", "-n", "4", "--rounds", "1",
           "--threads", "1", "--extra-threads", "", "--only", "onnxruntime/int8/", "--skip",
           "bf16,spinning,io_binding,greedy_loop,fuse_skip", "--skeleton-every", "2", "--skeleton-tokens", "8",
           "--batch", "2", "--warmup", "1", "--max-new-tokens", "24", "--no-progress", "--out", str(tmp), *extra]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=300)
    return (tmp / "engines_marian.md").read_text()


def _rows(text: str) -> dict[str, list[str]]:
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "config" not in line]
    return {r[0].strip(): [c.strip() for c in r] for r in rows}


def test_isolated_and_shared_runs_measure_the_same_rows(tmp_path):
    iso, one = _run(tmp_path / "iso", "--isolate"), _run(tmp_path / "one")
    assert "each configuration in its own process" in iso and "in one process" in one
    a, b = _rows(iso), _rows(one)
    assert set(a) == set(b) == {"ct2-direct/int8/t1", "torch/fp32/t1", "onnxruntime/int8/t1"}
    for label in a:
        assert a[label][-3:] == b[label][-3:], label  # BLEU at batch 1, at the batch, chrF: the same outputs
        assert a[label][5] != "n/a", label  # the skeleton's TPOT overhead came back from the worker
