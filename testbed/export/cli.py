"""``testbed export``: build (or reuse) an engine artefact and optionally copy it to a directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from testbed.config import DEFAULT_TRANSLATION_MODEL


def _int8_auto_fields() -> list[str]:
    """The search settings' names, from the dataclass (imports no ONNX tooling)."""
    import dataclasses

    from testbed.export.int8_auto import SearchSettings

    return [f.name for f in dataclasses.fields(SearchSettings)]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from testbed.export import FORMATS

    x = sub.add_parser(
        "export", help="export a model to an engine format (cached; --out copies it)",
        description="Export a model (registry name, local checkpoint or hub id) to an engine artefact. "
                    "The artefact is cached by a hash of model, precision, pruning and tool versions; "
                    "a second run reuses it. --out copies it to a directory (refused if it exists, unless --force).",
    )
    x.add_argument("--model", default=DEFAULT_TRANSLATION_MODEL)
    x.add_argument("--format", default="onnx", help=f"one of {', '.join(FORMATS)} (default: onnx)")
    x.add_argument("--precision", default="fp32",
                   help="onnx: fp32, int8, int8-static, int8-auto, int4-lossless, fp16 (default: fp32)")
    x.add_argument("--int8-auto", default=None, metavar="NAME=VALUE,...",
                   help=f"int8-auto search settings ({', '.join(_int8_auto_fields())}); "
                        "also read from TESTBED_INT8_AUTO")
    x.add_argument("--pruning", default="none", help="none (default), unstructured:S or structured:F")
    x.add_argument("--out", default=None, help="copy the artefact to this directory")
    x.add_argument("--force", action="store_true", help="rebuild the cached artefact, and overwrite --out")
    x.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from testbed.artifacts import verify
    from testbed.config import parse_pruning
    from testbed.export import export

    parse_pruning(args.pruning)
    if args.int8_auto is not None:
        import os

        from testbed.export.int8_auto import ENV, parse_search

        parse_search(args.int8_auto)  # a bad setting is refused before anything is built
        os.environ[ENV] = args.int8_auto
    where = export(args.model, args.format, args.precision, args.pruning,
                   Path(args.out) if args.out else None, force=args.force)
    manifest = verify(where)
    recipe = {"int8_auto": manifest["int8_auto"]["recipe"]} if "int8_auto" in manifest else {}
    print(json.dumps({"artifact": str(where), "key_hash": manifest.get("key_hash"),
                      "validation": manifest.get("validation"), **recipe, "files": sorted(manifest.get("files", {}))},
                     indent=2))
    return 0
