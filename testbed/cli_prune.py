"""``testbed prune``: build (or reuse) a pruned checkpoint and print what pruning did."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
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
    p.add_argument("--finetune-minutes", type=float, default=0.0,
                   help="recovery fine-tuning after pruning, this many minutes (seq2seq; default: none). "
                        "The result is a new checkpoint: run it with --model DIR (--out) and --pruning none")
    p.add_argument("--corpus", default="build/corpus/train.tsv",
                   help="training corpus for --finetune-minutes (doc<TAB>en<TAB>de; models/recipe/build_corpus.py)")
    p.add_argument("--out", default=None, help="copy the pruned checkpoint to this directory (refused if it exists)")
    p.set_defaults(func=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    from testbed.config import parse_pruning
    from testbed.errors import ConfigError
    from testbed.prune import finetune_key, pruned_model_dir, pruning_stats, recovery_finetune
    from testbed.registry import resolve_model

    if parse_pruning(args.pruning) is None:
        raise ConfigError("pruning", args.pruning, "unstructured:S or structured:F", "nothing to build for 'none'")
    info = resolve_model(args.model)
    ft = ftkey = None
    if args.finetune_minutes:
        corpus = Path(args.corpus)
        ft = recovery_finetune(corpus, args.finetune_minutes)
        ftkey = finetune_key(corpus, args.finetune_minutes)
    path = pruned_model_dir(info, args.pruning, force=args.force, finetune=ft, finetune_key=ftkey)
    if args.out:
        from testbed.artifacts import export_to

        path = export_to(path, Path(args.out), force=args.force)
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
    if stats.get("finetune"):
        f = stats["finetune"]
        print(f"  recovery fine-tune: {f['steps']} steps, {f['sentences']} sentences in {f['minutes']} min, "
              f"loss {f['loss_first']:.3f} -> {f['loss_last_50']:.3f} (mean of the last 50 steps)")
        print(f"  run it with: --model {path} (and --pruning none)")
    return 0
