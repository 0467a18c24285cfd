"""Sweeps that cannot lose rows: the run directory's lock, the exit status, the summary line (issue 15)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.eval.lock import LOCK_NAME, LockedError, RunLock
from testbed.eval.runner import read_rows, run_sweep
from testbed.eval.sweep import load_sweep

SET = "".join(f"doc\tsentence number {i} here\tSatz Nummer {i} hier\n" for i in range(4))


def sweep_file(tmp_path: Path, precisions: str = '["fp32", "int8"]') -> Path:
    (tmp_path / "set.tsv").write_text(SET, encoding="utf-8")
    p = tmp_path / "sweep.toml"
    p.write_text('name = "lock"\nmodel = "fake-en-de"\ndataset = "set.tsv"\nmax_new_tokens = 8\n'
                 "[offline]\nnum_examples = 4\n[singlestream]\nnum_requests = 2\nwarmup = 0\n"
                 '[accuracy]\nbootstrap_samples = 10\n[reference]\nengine = "fake"\n[defaults]\nthreads = 1\n'
                 f'batch = 2\n[[configs]]\nengine = "fake"\nprecision = {precisions}\n', encoding="utf-8")
    return p


HOLDER = """
import sys
from pathlib import Path
from testbed.eval.lock import RunLock
with RunLock(Path(sys.argv[1]), "testbed eval --sweep other --out shared"):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    sweep = load_sweep(sweep_file(tmp_path))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError) as e:
            run_sweep(sweep, out, progress=False, render=False)
        msg = str(e.value)
        assert f"pid {holder.pid} on {socket.gethostname()}" in msg
        assert "testbed eval --sweep other --out shared" in msg and "use another --out" in msg
        assert read_rows(out) == []  # nothing was written by the refused sweep
    finally:
        holder.communicate("\n", timeout=30)
    # the holder is done: the lock is free again, and its file is gone
    assert not (out / LOCK_NAME).exists()
    rows = run_sweep(sweep, out, progress=False, render=False)
    assert [r["status"] for r in rows] == ["ok", "ok"] and not (out / LOCK_NAME).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                             "command": "testbed eval --sweep killed", "started_at": "then"}))
    said: list[str] = []
    rows = run_sweep(load_sweep(sweep_file(tmp_path)), out, progress=False, render=False, log=said.append)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    warning = next(m for m in said if m.startswith("warning: took over a stale lock"))
    assert f"pid {dead.pid}" in warning and "testbed eval --sweep killed" in warning and "process is gone" in warning


def test_the_lock_is_held_by_the_running_sweep(tmp_path):
    out = tmp_path / "run"
    seen: list[str] = []

    def log(msg: str) -> None:  # called while the sweep runs: a second writer must be refused now
        if not seen:
            with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
                RunLock(out, "second").acquire()
        seen.append(msg)

    run_sweep(load_sweep(sweep_file(tmp_path)), out, progress=False, render=False, log=log)
    assert seen


def test_exit_status_and_summary_line(tmp_path, monkeypatch, capsys):
    from testbed.cli import main
    from testbed.engines import registry

    sweep = sweep_file(tmp_path)
    assert main(["eval", "--sweep", str(sweep), "--out", str(tmp_path / "ok"), "--no-progress"]) == 0
    assert "sweep 'lock': 2 done, 0 failed, 0 skipped of 2 configurations" in capsys.readouterr().err

    def broken(cfg, **_):  # type: ignore[no-untyped-def]
        raise RuntimeError("the runtime crashed")

    monkeypatch.setattr(registry, "create_engine", broken)
    assert main(["eval", "--sweep", str(sweep), "--out", str(tmp_path / "bad"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert ("sweep 'lock': 0 done, 2 failed, 0 skipped of 2 configurations -- no configuration was measured: "
            "exit status 1") in err
