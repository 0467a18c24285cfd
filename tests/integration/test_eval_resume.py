"""A real `testbed eval` on the embedded Marian model, killed twice mid-sweep and resumed.

The sweep is tiny (6 Offline sentences, 8 SingleStream rounds per configuration) so the test
stays short; it checks what matters with interleaving: a kill during the Offline phase loses no
finished row; a kill during the SingleStream rounds keeps every Offline row and every
checkpointed round; the rerun recomputes none of them, and the finished sweep has a gated row
with latency for every configuration, and its report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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
num_requests = 8
warmup = 1
[accuracy]
bootstrap_samples = 100
divergence_examples = 3
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


def _live_records(out: Path) -> int:
    n = 0
    for p in (out / "records").glob("*.jsonl") if (out / "records").is_dir() else []:
        n += sum(not json.loads(line)["warmup"] for line in p.read_text().splitlines() if line.strip())
    return n


def _run_until(cmd: list[str], env: dict, ready: Callable[[], bool]) -> str:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    try:
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == -signal.SIGKILL, err
    return err


@pytest.mark.slow
def test_eval_killed_mid_offline_and_mid_rounds_resumes_without_losing_or_recomputing(tmp_path):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(SWEEP)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "testbed.cli", "eval", "--sweep", str(sweep), "--out", str(out), "--no-progress"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}

    # 1. killed during the Offline phase, as soon as the first row is written
    err = _run_until(cmd, env, lambda: bool(_rows(out)))
    first = _rows(out)
    assert 1 <= len(first) < 4, f"the kill should land in the Offline phase: {len(first)} rows\n{err}"
    assert first[0]["is_reference"] and first[0]["status"] == "ok" and first[0]["singlestream"] is None

    # 2. resumed, killed during the SingleStream rounds (once one round is checkpointed)
    err = _run_until(cmd, env, lambda: _live_records(out) > 0)
    second = _rows(out)
    assert len(second) == 4 and all(r["status"] == "ok" and r["singlestream"] is None for r in second), err
    assert 0 < _live_records(out) < 4 * 8, f"the kill should land in the rounds\n{err}"
    kept = {r["key"]: r for r in second}
    for r in first:
        assert kept[r["key"]] == r  # the Offline rows of the first run, not recomputed
    checkpointed = {p.stem: [json.loads(x) for x in p.read_text().splitlines() if not json.loads(x)["warmup"]]
                    for p in (out / "records").glob("*.jsonl")}

    # 3. resumed to the end
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    after = _rows(out)
    assert len(after) == 4 and all(r["status"] == "ok" for r in after), res.stderr
    assert "resuming: 4 of 4 configurations already done" in res.stderr
    assert res.stderr.count("Offline done earlier, kept; SingleStream pending") == 4
    for r in after:
        assert {**r, "singlestream": None} == kept[r["key"]]  # Offline, accuracy and gate unchanged
        ss = r["singlestream"]
        assert ss["completed"] == 8 and ss["method"] == "interleaved" and ss["p90_e2el_ms"] > 0
        recs = [json.loads(x) for x in (out / "records" / f"{r['key']}.jsonl").read_text().splitlines()]
        live = [x for x in recs if not x["warmup"]]
        assert [x["extra"]["round"] for x in live] == list(range(8))
        assert live[: len(checkpointed.get(r["key"], []))] == checkpointed.get(r["key"], [])  # rounds kept
        assert ss["sessions"] == (2 if checkpointed.get(r["key"]) else 1)
    ref = next(r for r in after if r["is_reference"])
    assert ref["accuracy"]["vs_references"]["bleu"] > 5 and ref["gate"]["verdict"] == "pass"
    for r in after:
        assert r["gate"]["score_fp32"] == ref["accuracy"]["vs_references"]["bleu"]
        assert r["gate"]["verdict"] in ("pass", "fail", "within noise")
        assert r["offline"]["n"] == 6 and r["batch1"]["n"] == 3 and 0 <= r["batch1"]["batch_divergence"] <= 1
        assert r["signature"]["model_id"].startswith("marian-en-de@")
    assert "| 1 | `" in res.stdout and (out / "pareto.png").is_file() and (out / "results.csv").is_file()
    assert res.stdout.startswith("- command: `testbed eval --sweep")


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
