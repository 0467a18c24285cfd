"""Built artefacts (exported ONNX graphs, converted CTranslate2 models, pruned checkpoints).

One pipeline for all of them: a *key* (a dict naming everything the artefact depends on:
source model and its content hash, kind, precision, pruning, builder version, tool versions) is
hashed into a cache directory ``<cache>/artifacts/<kind>/<name>-<keyhash>``.  Beside the files
sits ``manifest.json``: the key, the sha256 of every file, the build time, and whatever the
builder reports.  A second request with the same key reuses the artefact after checking every
file's hash; a corrupt or mismatched artefact is rebuilt (with a warning), never silently used.

Builds run in a temporary sibling directory under a lock and are renamed into place, so a
killed build leaves nothing that looks finished.  :func:`export_to` copies an artefact to a
user-chosen directory and refuses to overwrite one without ``force``.

Who builds what: :data:`BUILDERS` names each builder (``onnx``: the ONNX exporter,
``ctranslate2``: the CTranslate2 converter) and where it lives; :func:`ensure` dispatches to it,
importing it only then.  An engine declares the builder of its artefact
(``Engine.artifact_builder``) and gets the artefact through :func:`ensure`, so no engine imports
the exporter (which itself uses an engine's runtime to validate what it built).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError, TestbedError
from testbed.io import write_json_atomic

MANIFEST = "manifest.json"

# builder name -> "module:function", a function (model_info, precision, pruning, *, force=False,
# root=None, log=None) -> the artefact's directory, built on first use (imported by :func:`builder`)
BUILDERS: dict[str, str] = {
    "onnx": "testbed.export.onnx_export:ensure_onnx",
    "ctranslate2": "testbed.engines.ctranslate2.convert:ct2_model_dir",
}


class ArtifactError(TestbedError):
    """An artefact is missing, corrupt or does not match what was asked for."""


def cache_root() -> Path:
    base = os.environ.get("TESTBED_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "testbed"


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): file_sha256(p)
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def artifact_dir(kind: str, name: str, key: dict[str, Any], root: Path | None = None) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return (root or cache_root()) / "artifacts" / kind / f"{safe}-{key_hash(key)[:16]}"


def verify(d: Path, key: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the manifest of a finished artefact, or raise :class:`ArtifactError` saying why not."""
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{d}: no {MANIFEST} (not a finished artefact)")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{d}: unreadable {MANIFEST}: {e}") from e
    if key is not None and manifest.get("key") != json.loads(json.dumps(key, default=str)):
        raise ArtifactError(f"{d}: built for a different key (model, precision or tool versions changed)")
    want = manifest.get("files", {})
    have = _files(d)
    if want != have:
        bad = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise ArtifactError(f"{d}: files differ from the manifest's hashes: {', '.join(bad[:5])}")
    return dict(manifest)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(
    kind: str,
    name: str,
    key: dict[str, Any],
    builder: Callable[[Path], dict[str, Any] | None],
    *,
    force: bool = False,
    root: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Return the directory of the artefact for ``key``, building it with ``builder(tmpdir)`` if needed.

    ``builder`` writes its files into the directory it is given and may return extra manifest
    fields.  ``force`` rebuilds even when a valid artefact exists.
    """
    say = log or (lambda m: print(m, file=sys.stderr))
    d = artifact_dir(kind, name, key, root)
    with _lock(d.with_name(d.name + ".lock")):
        if d.exists() and not force:
            try:
                verify(d, key)
                return d
            except ArtifactError as e:
                say(f"rebuilding {kind} artefact: {e}")
        tmp = d.with_name(d.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        t0 = time.time()
        try:
            extra = builder(tmp) or {}
            manifest = {
                "kind": kind,
                "name": name,
                "key": json.loads(json.dumps(key, default=str)),
                "key_hash": key_hash(key),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_s": round(time.time() - t0, 2),
                **extra,
                "files": _files(tmp),
            }
            write_json_atomic(tmp / MANIFEST, manifest)
            if d.exists():
                shutil.rmtree(d)
            os.replace(tmp, d)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return d


def builder(name: str) -> Callable[..., Path]:
    """The builder function registered as ``name`` in :data:`BUILDERS` (its module imported now)."""
    target = BUILDERS.get(name)
    if target is None:
        raise ConfigError("format", name, ", ".join(BUILDERS))
    mod, fn = target.split(":")
    f: Callable[..., Path] = getattr(importlib.import_module(mod), fn)
    return f


def ensure(name: str, model_info: Any, precision: str, pruning: str = "none", **kw: Any) -> Path:
    """The artefact of ``model_info`` (a :class:`testbed.registry.ModelInfo`) for ``precision`` and
    ``pruning``, built by the builder ``name`` on first use and reused after (``kw``: ``force``,
    ``root``, ``log``, or a builder's own options)."""
    return builder(name)(model_info, precision, pruning, **kw)


def export_to(src: Path, dest: Path, force: bool = False) -> Path:
    """Copy a finished artefact to ``dest``; refuse to overwrite an existing directory unless ``force``."""
    verify(src)
    if dest.exists():
        if not force:
            raise ArtifactError(f"{dest} exists; pass --force to overwrite it")
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    os.replace(tmp, dest)
    return dest
