"""Model -> engine artefacts: one pipeline per format, dispatched by :mod:`testbed.artifacts`.

``export(model, fmt, precision, pruning, out, force)`` builds (or reuses) the cached artefact for
the request (:mod:`testbed.artifacts`: hash-keyed, manifest with file hashes) and, when ``out`` is
given, copies it there (refusing to overwrite without ``force``).  The formats are the builders of
:data:`testbed.artifacts.BUILDERS`, the same ones the engines load their artefacts through.
"""

from __future__ import annotations

from pathlib import Path

from testbed.artifacts import BUILDERS, builder, export_to

# the formats `testbed export --format` accepts (imported lazily: `import testbed.export` imports no runtime)
FORMATS = tuple(BUILDERS)


def export(model: str, fmt: str, precision: str, pruning: str = "none", out: Path | None = None,
           force: bool = False) -> Path:
    """Build or reuse the artefact; copy it to ``out`` if given.  Returns where it is."""
    from testbed.registry import resolve_model

    build = builder(fmt)  # ConfigError naming the formats, before the model is looked up
    cached = build(resolve_model(model), precision, pruning, force=force)
    return export_to(cached, out, force=force) if out is not None else cached
