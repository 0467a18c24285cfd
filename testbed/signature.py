"""The signature carried by every result: enough to reproduce the number."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

PACKAGES = ("testbed", "torch", "transformers", "sentencepiece", "sacrebleu", "onnxruntime",
            "onnxruntime-gpu", "ctranslate2", "tensorrt", "gradio")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


@lru_cache(maxsize=1)
def git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    sha = res.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return sha + ("+dirty" if dirty else "")


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
             "amx_int8", "amx_bf16", "asimd", "sve")
"""CPU features that change which int8 / bf16 kernels run (and so their speed and even their output)."""


@lru_cache(maxsize=1)
def machine() -> dict[str, Any]:
    """CPU model, the ISA features that matter for int8/bf16 kernels, cores, Python, OS."""
    import os

    model: str | None = None
    flags: set[str] = set()
    try:  # the first processor's entries (every core repeats them)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and model is None:
                model = value
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    cpu = model or platform.processor() or platform.machine()
    isa = [f for f in ISA_FLAGS if f in flags]
    return {"cpu": cpu, "isa": isa, "cores": os.cpu_count(), "python": platform.python_version(),
            "os": platform.platform()}


def machine_line() -> str:
    """One line naming the CPU and its ISA, for result files: ``AMD EPYC (avx2, fma) x2``."""
    m = machine()
    return f"{m['cpu']} ({', '.join(m['isa']) or 'no AVX2/AVX-512/AMX'}) x{m['cores']}"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages as ``"0.38 0.78 0.95"`` ("n/a" where the OS has none)."""
    import os

    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


_LOAD_AT_IMPORT = load_average()  # a bench script imports this module before it measures


def result_header(command: str, at_end: bool = True, **facts: Any) -> str:
    """The header every committed result file starts with (Markdown, one bullet per fact).

    Names the command, the date, the CPU model and ISA, the load average (1, 5, 15 min) when this
    module was imported (the run's start) and when the header was written (its end), the git SHA
    of the tree that produced it (``+dirty`` when uncommitted changes were present; call
    :func:`git_sha` at the start so later edits cannot relabel the run) and the package versions;
    ``facts`` (rounds, requests, ...) are added as given.  ``at_end=False`` for a header written
    when the run starts (the sweep's), which reports its end load itself.
    """
    import datetime as _dt

    v = package_versions()
    lines = [f"- command: `{command}`",
             f"- date: {_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')}",
             f"- machine: {machine_line()}; load average at start {_LOAD_AT_IMPORT}"
             + (f", at the end {load_average()}" if at_end else ""),
             f"- git: {git_sha()}",
             "- versions: " + ", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "ctranslate2", "transformers")
                                       if k in v)]
    lines += [f"- {k}: {val}" for k, val in facts.items()]
    return "\n".join(lines) + "\n"


def write_result(out: Path, title: str, command: str, intro: str, body: str, **facts: Any) -> str:
    """A bench script's result file: ``# title``, :func:`result_header` for ``command`` (with
    ``facts``), an introductory paragraph, the body; printed and written atomically.  Returns the text."""
    from testbed.io import write_text_atomic

    text = f"# {title}\n\n" + result_header(command, **facts) + "\n" + intro + "\n\n" + body + "\n"
    print(text)
    write_text_atomic(out, text)
    return text


def signature(**fields: Any) -> dict[str, Any]:
    return {**fields, "versions": package_versions(), "git_sha": git_sha(), "machine": machine()}
