"""The Results tab's work: find the latest evaluation run and run a small sweep as a subprocess.

It integrates through files and the command line only: an evaluation run is a directory under
``runs/`` holding ``report.md`` and/or ``pareto.png`` (written by ``testbed eval --sweep FILE
--out DIR``), and the sweep button runs that command in a child process.  A build without the
``eval`` subcommand says so instead of failing obscurely.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

REPORT, PARETO = "report.md", "pareto.png"
_PROGRESS = re.compile(r"(\d+)/(\d+)")
NO_EVAL = ("this build has no `testbed eval` subcommand yet (argparse: invalid choice 'eval'); "
           "the Results tab shows its reports once it exists")


@dataclass(frozen=True)
class RunView:
    path: Path
    when: str
    report: str | None
    pareto: Path | None


def latest_run(runs: Path) -> RunView | None:
    """The most recently written directory (``runs`` itself or a child) with a report or a plot."""
    if not runs.is_dir():
        return None
    best: tuple[float, Path] | None = None
    for d in [runs, *[p for p in runs.iterdir() if p.is_dir()]]:
        stamps = [(d / f).stat().st_mtime for f in (REPORT, PARETO) if (d / f).is_file()]
        if stamps and (best is None or max(stamps) > best[0]):
            best = (max(stamps), d)
    if best is None:
        return None
    d = best[1]
    report = (d / REPORT).read_text(encoding="utf-8") if (d / REPORT).is_file() else None
    return RunView(d, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(best[0])), report,
                   d / PARETO if (d / PARETO).is_file() else None)


def sweep_files() -> list[Path]:
    """Committed sweep files (``eval/sweeps/*.toml``), small ones first."""
    try:
        root = Path(str(resources.files("testbed.eval").joinpath("sweeps")))
    except (ModuleNotFoundError, FileNotFoundError):
        return []
    if not root.is_dir():
        return []
    files = sorted(root.glob("*.toml"))
    small = ("small", "smoke", "quick", "demo", "ui", "tiny")
    return sorted(files, key=lambda p: (not any(w in p.stem for w in small), p.name))


def sweep_command(sweep: str, out: Path) -> list[str]:
    """``testbed eval --sweep FILE --out DIR`` run by this interpreter."""
    return [sys.executable, "-c", "import sys; from testbed.cli import main; sys.exit(main())",
            "eval", "--sweep", sweep, "--out", str(out)]


def run_sweep(sweep: str, runs: Path, timeout_s: float = 1800.0) -> Iterator[tuple[float | None, str, bool]]:
    """Run a sweep; yields ``(fraction done or None, output so far, finished)``."""
    sweep = (sweep or "").strip()
    if not sweep:
        yield None, "no sweep file given: enter the path of a sweep file (eval/sweeps/*.toml)", True
        return
    if not Path(sweep).is_file():
        yield None, f"sweep file {sweep!r} not found: give the path of an existing sweep file", True
        return
    out = runs / time.strftime("ui-sweep-%Y%m%d-%H%M%S")
    cmd = sweep_command(sweep, out)
    shown = " ".join(["testbed", *cmd[3:]])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    buf, frac, last = "", None, 0.0
    t0 = time.monotonic()
    try:
        fd = proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk.decode("utf-8", "replace")
            m = _PROGRESS.findall(buf[-200:])
            if m:
                done, total = map(int, m[-1])
                frac = done / total if total else None
            if time.monotonic() - last > 0.25:
                last = time.monotonic()
                yield frac, f"$ {shown}\n{_tail(buf)}", False
            if time.monotonic() - t0 > timeout_s:
                proc.kill()
                buf += f"\n(stopped after {timeout_s:.0f} s)"
                break
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc != 0 and "invalid choice: 'eval'" in buf:
        yield None, f"$ {shown}\n{NO_EVAL}\n\n{_tail(buf)}", True
    elif rc != 0:
        yield None, (f"$ {shown}\nsweep failed (exit status {rc}); finished configurations stay in {out}\n\n"
                     f"{_tail(buf)}"), True
    else:
        yield 1.0, f"$ {shown}\ndone: {out}\n\n{_tail(buf)}", True


def _tail(text: str, n: int = 4000) -> str:
    # a progress bar rewrites its line with \r: keep the last state of each line
    lines = [seg.split("\r")[-1] for seg in text.split("\n")]
    return "\n".join(lines)[-n:]
