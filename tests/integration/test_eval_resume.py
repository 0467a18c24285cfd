"""A real `testbed eval` on the embedded Marian model, killed mid-sweep and resumed.

The sweep is tiny (6 Offline sentences, 3 SingleStream requests per configuration) so the test
stays short; it checks what matters: the kill loses no finished row, the rerun recomputes none of
them, and the finished sweep has a gated row for every configuration and its report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SWEEP = """
name = "kill-test"
model = "marian-en-de"
dataset = "test"
max_new_tokens = 40
[offline]
num_examples = 6
[singlestream]
num_requests = 3
warmup = 1
[accuracy]
bootstrap_samples = 100
[defaults]
threads = 1
batch = 4
[[configs]]
engine = "torch"
precision = ["fp32", "int8"]
batch = [4, 8]
"""


def _rows(out: Path) -> list[dict]:
    p = out / "results.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.is_file() else []


@pytest.mark.slow
def test_eval_killed_mid_run_resumes_without_losing_or_recomputing(tmp_path):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(SWEEP)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "testbed.cli", "eval", "--sweep", str(sweep), "--out", str(out), "--no-progress"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    try:
        while not _rows(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        err = proc.stderr.read() if proc.stderr else ""
    before = _rows(out)
    assert proc.returncode == -signal.SIGKILL, err
    assert 1 <= len(before) < 4, f"the kill should land mid-sweep: {len(before)} rows\n{err}"
    assert before[0]["is_reference"] and before[0]["status"] == "ok"

    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    after = _rows(out)
    assert len(after) == 4 and all(r["status"] == "ok" for r in after), res.stderr
    assert len({r["key"] for r in after}) == 4
    kept = {r["key"]: r for r in after}
    for r in before:
        assert kept[r["key"]] == r  # not recomputed: the very same row, timings included
    assert f"resuming: {len(before)} of 4 configurations already done" in res.stderr
    assert res.stderr.count("done earlier, kept") == len(before)
    ref = next(r for r in after if r["is_reference"])
    assert ref["accuracy"]["vs_references"]["bleu"] > 5 and ref["gate"]["passed"] is True
    for r in after:
        assert r["gate"]["bleu_fp32"] == ref["accuracy"]["vs_references"]["bleu"]
        assert r["gate"]["passed"] in (True, False)
        assert r["singlestream"]["completed"] == 3 and r["offline"]["n"] == 6
        assert r["signature"]["model_id"].startswith("marian-en-de@")
    assert "| 1 | `" in res.stdout and (out / "pareto.png").is_file() and (out / "results.csv").is_file()


@pytest.mark.gpu
def test_gpu_sweep_runs_torch_on_cuda(tmp_path):
    from testbed.eval.runner import run_sweep
    from testbed.eval.sweep import load_sweep, parse_sweep

    assert load_sweep("gpu").reference.device == "cuda"
    sweep = parse_sweep({
        "model": "marian-en-de", "dataset": "test", "max_new_tokens": 64,
        "offline": {"num_examples": 64}, "singlestream": {"num_requests": 8, "warmup": 2},
        "defaults": {"device": "cuda", "batch": 32},
        "configs": [{"engine": "torch", "precision": ["fp32", "fp16", "bf16"]}],
    }, "gpu-test")
    rows = run_sweep(sweep, tmp_path / "run", progress=False)
    assert [r["status"] for r in rows] == ["ok"] * 3, [r["error"] for r in rows]
    for r in rows:
        assert r["gate"]["passed"] in (True, False) and r["offline"]["sentences_per_s"] > 0
