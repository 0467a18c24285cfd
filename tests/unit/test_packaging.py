"""The explicit package list in pyproject.toml covers every package in the tree."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_listed():
    """Python packages and importable data folders (setuptools warns about unlisted ones) are listed."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapped = {v: k for k, v in cfg["package-dir"].items()}
    found = set()
    for init in ROOT.glob("testbed/**/__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT).parts))
    for top, pkg in mapped.items():
        assert (ROOT / top / "__init__.py").is_file(), top
        found.add(pkg)
        for sub in (ROOT / top).iterdir():  # data folders with an importable name
            if sub.is_dir() and sub.name.isidentifier() and sub.name != "__pycache__":
                found.add(f"{pkg}.{sub.name}")
    assert found == listed, f"missing: {found - listed}; stale: {listed - found}"
    data = cfg["package-data"]
    for pkg in listed - {p for p in found if (ROOT / p.replace(".", "/") / "__init__.py").is_file()}:
        if pkg not in mapped.values():
            assert pkg in data, f"data folder {pkg} lists no package-data"


def test_license_is_an_spdx_string():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"


def test_import_testbed_is_light():
    import subprocess
    import sys

    code = "import sys, testbed, testbed.cli, testbed.registry; print(int('torch' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
