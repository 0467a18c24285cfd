"""Model -> engine artefacts: one pipeline per format, dispatched through a small table.

``export(model, fmt, precision, pruning, out, force)`` builds (or reuses) the cached artefact for
the request (:mod:`testbed.artifacts`: hash-keyed, manifest with file hashes) and, when ``out`` is
given, copies it there (refusing to overwrite without ``force``).  Formats register one builder
function ``(model, precision, pruning, force) -> cached artefact directory`` in :data:`FORMATS`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from testbed.artifacts import export_to
from testbed.errors import ConfigError

# format -> "module:function" (imported lazily: `import testbed.export` imports no runtime)
FORMATS: dict[str, str] = {
    "onnx": "testbed.export.onnx_export:export_cached",
    "ctranslate2": "testbed.engines.ctranslate2.convert:export_cached",
}


def export(model: str, fmt: str, precision: str, pruning: str = "none", out: Path | None = None,
           force: bool = False) -> Path:
    """Build or reuse the artefact; copy it to ``out`` if given.  Returns where it is."""
    target = FORMATS.get(fmt)
    if target is None:
        raise ConfigError("format", fmt, ", ".join(FORMATS))
    mod, fn = target.split(":")
    cached: Path = getattr(importlib.import_module(mod), fn)(model, precision, pruning, force)
    return export_to(cached, out, force=force) if out is not None else cached
