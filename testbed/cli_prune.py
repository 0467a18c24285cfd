"""``testbed prune``: build (or reuse) a pruned checkpoint and print what pruning did."""

from __future__ import annotations

import argparse
import json
from typing import Any

from testbed.config import DEFAULT_TRANSLATION_MODEL, PRUNING_HELP


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "prune", help="build a pruned checkpoint in the artefact cache and print its statistics",
        description="Prune a model (before any engine sees it) and save the checkpoint in the artefact cache, "
                    "where every engine finds it with --pruning SPEC.  " + PRUNING_HELP + ".",
    )
    p.add_argument("--model", default=DEFAULT_TRANSLATION_MODEL, help="registry name or local checkpoint directory")
    p.add_argument("--pruning", required=True, help="unstructured:S or structured:F")
    p.add_argument("--force", action="store_true", help="rebuild even if a valid cached checkpoint exists")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.set_defaults(func=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    from testbed.config import parse_pruning
    from testbed.errors import ConfigError
    from testbed.prune import pruned_model_dir, pruning_stats
    from testbed.registry import resolve_model

    if parse_pruning(args.pruning) is None:
        raise ConfigError("pruning", args.pruning, "unstructured:S or structured:F", "nothing to build for 'none'")
    info = resolve_model(args.model)
    path = pruned_model_dir(info, args.pruning, force=args.force)
    stats = pruning_stats(path) or {}
    if args.json:
        print(json.dumps({"path": str(path), **stats}, indent=2))
        return 0
    print(f"{info.name} {stats.get('spec')}: {path}")
    before, after = stats.get("params_before", 0), stats.get("params_after", 0)
    print(f"  parameters {before:,} -> {after:,} ({after / before:.3f} of the original)" if before else "")
    print(f"  included Linear weights {stats.get('included_weights', 0):,}, sparsity {stats.get('sparsity', 0):.3f}")
    for kind, v in (stats.get("per_kind") or {}).items():
        print(f"    {kind}: {v['weights']:,} weights, sparsity {v['sparsity']:.3f}")
    if "ffn_width_after" in stats:
        print(f"  FFN width {stats['ffn_width_before']} -> {stats['ffn_width_after']}")
    return 0
