"""The ``testbed eval`` and ``testbed report`` subcommands (registered by :mod:`testbed.cli`).

Thin: parse, call :func:`testbed.eval.runner.run_sweep` / :func:`testbed.eval.report.render_dir`,
print.  Nothing heavy is imported until a subcommand runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path
from typing import Any


def cmd_eval(args: argparse.Namespace) -> int:
    """Exit status 0 when at least one configuration was measured, 1 when none was (all failed or skipped)."""
    from testbed.eval.runner import run_sweep, status_counts
    from testbed.eval.sweep import load_sweep

    sweep = load_sweep(args.sweep)
    if args.no_interleave:
        sweep = dataclasses.replace(sweep, interleave=False)
    out = Path(args.out) if args.out else Path("runs") / f"eval-{sweep.name}"
    how = "interleaved rounds" if sweep.interleave else "one configuration after another"
    print(f"sweep {sweep.name!r} ({sweep.path}): {len(sweep.configs)} configurations; "
          f"Offline + accuracy on the first {sweep.offline_examples} examples of {sweep.dataset!r} "
          f"(the first {len(sweep.divergence_set)} at batch 1 too), SingleStream on the first "
          f"{sweep.singlestream_requests} ({sweep.warmup} warm-up; {how}); out: {out}", file=sys.stderr)
    command = "testbed " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    t0 = time.perf_counter()
    rows = run_sweep(sweep, out, resume=args.resume, progress=not args.no_progress, command=command,
                     log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"sweep wall time {time.perf_counter() - t0:.0f} s; results in {out}/ "
          "(results.jsonl, results.csv, report.md, pareto.png)", file=sys.stderr)
    n = status_counts(sweep, rows)
    missing = f", {n['missing']} missing" if n["missing"] else ""
    verdict = "" if n["done"] else " -- no configuration was measured: exit status 1"
    print(f"sweep {sweep.name!r}: {n['done']} done, {n['failed']} failed, {n['skipped']} skipped of "
          f"{len(sweep.configs)} configurations{missing}{verdict}", file=sys.stderr)
    return 0 if n["done"] else 1


def cmd_report(args: argparse.Namespace) -> int:
    from testbed.eval.report import render_dir

    paths = render_dir(Path(args.dir))
    print(paths["report"].read_text(encoding="utf-8") if paths["report"] else "")
    return 0


def add_parsers(sub: Any) -> None:
    e = sub.add_parser(
        "eval", help="BLEU-vs-latency sweep: Offline + SingleStream + accuracy gate per configuration",
        description="Run every configuration of a sweep file (TOML, see eval/sweeps/): Offline throughput, "
                    "BLEU/chrF vs references and vs fp32, batch divergence (batch 1 vs the row's batch), the gate "
                    "(pass / fail / within noise), then SingleStream latency in rounds across configurations; "
                    "writes results.jsonl, results.csv, report.md and pareto.png.  An interrupted sweep resumes "
                    "where it stopped.")
    e.add_argument("--sweep", default="default",
                   help="a sweep .toml file, or the name of a shipped one: default, chat (default: default)")
    e.add_argument("--out", default=None, help="run directory (default: runs/eval-<sweep name>)")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="skip the configurations already done in --out (default)")
    g.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over (the previous results.jsonl is kept as results.jsonl.prev)")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.add_argument("--no-interleave", action="store_true",
                   help="SingleStream one configuration after another, each right after loading (the old order) "
                        "instead of rounds across all loaded configurations")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("report", help="re-render report.md, results.csv and pareto.png of a sweep directory",
                       description="Re-render a sweep run directory's report from its results.jsonl.")
    r.add_argument("dir", help="the run directory (holding results.jsonl)")
    r.set_defaults(func=cmd_report)
