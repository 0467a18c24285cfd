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

from testbed.errors import TestbedError


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
    if args.waterfall:
        return _waterfall(args)
    if not args.dir:
        raise TestbedError("report: give a sweep run directory (DIR), or --waterfall RECORDS --out FILE.png")
    from testbed.eval.report import render_dir

    paths = render_dir(Path(args.dir))
    print(paths["report"].read_text(encoding="utf-8") if paths["report"] else "")
    return 0


def _waterfall(args: argparse.Namespace) -> int:
    """``testbed report --waterfall RECORDS [--request ID] --out FILE.png``."""
    from testbed.report.waterfall import of_record, pick
    from testbed.report.waterfall_plot import save_png

    if args.dir:
        raise TestbedError(f"report: give either DIR ({args.dir!r}) or --waterfall RECORDS, not both")
    if not args.out:
        raise TestbedError("report --waterfall: --out FILE.png is required (where to write the figure)")
    records = read_records(Path(args.waterfall))
    rec = pick(records, args.request)
    wf = of_record(rec)
    out = save_png([wf], Path(args.out), title=f"{args.waterfall}: request {rec.request_id}"
                   + ("" if args.request else " (the median E2E)"))
    for p in wf.phases:
        print(f"{p.start_ms:9.3f} .. {p.end_ms:9.3f} ms  {p.duration_ms:8.3f} ms  {p.name} [{p.source}]")
    for note in wf.notes:
        print(f"note: {note}")
    print(f"E2E {wf.total_ms:.3f} ms; wrote {out}", file=sys.stderr)
    return 0


def read_records(path: Path) -> list[Any]:
    """The records of a ``records.jsonl`` (one RequestRecord per line), with errors naming the line."""
    import json

    from testbed.metrics.records import RequestRecord

    if not path.is_file():
        raise TestbedError(f"--waterfall {str(path)!r}: no such file; give a records.jsonl "
                           "(written by testbed bench --out DIR)")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(RequestRecord.from_dict(json.loads(line)))
        except (ValueError, TypeError) as exc:
            raise TestbedError(f"{path}:{n}: not a request record ({exc})") from None
    if not out:
        raise TestbedError(f"{path}: no records in it")
    return out


def add_parsers(sub: Any) -> None:
    e = sub.add_parser(
        "eval", help="BLEU-vs-latency sweep: Offline + SingleStream + accuracy gate per configuration",
        description="Run every configuration of a sweep file (TOML, see eval/sweeps/): Offline throughput, "
                    "BLEU/chrF vs references and vs fp32, batch divergence (batch 1 vs the row's batch), the gate "
                    "(pass / fail / within noise), then SingleStream latency in rounds across configurations; "
                    "writes results.jsonl, results.csv, report.md and pareto.png.  An interrupted sweep resumes "
                    "where it stopped.")
    e.add_argument("--sweep", default="default",
                   help="a sweep .toml file, or the name of a shipped one: default, chat, dialogue, gpu "
                        "(default: default)")
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

    r = sub.add_parser("report", help="re-render a sweep directory's report, or draw one request's latency waterfall",
                       description="Re-render a sweep run directory's report from its results.jsonl; or, with "
                                   "--waterfall RECORDS, draw one request's latency waterfall (phases from the "
                                   "send to the last token, each with the clock that took it) as a PNG.")
    r.add_argument("dir", nargs="?", default=None, help="the run directory (holding results.jsonl)")
    r.add_argument("--waterfall", metavar="RECORDS", default=None,
                   help="a records.jsonl (testbed bench --out DIR; --return-timing adds the server's phases)")
    r.add_argument("--request", metavar="ID", default=None,
                   help="the request id to draw (default: the completed request with the median E2E)")
    r.add_argument("--out", metavar="FILE.png", default=None, help="where to write the waterfall PNG")
    r.set_defaults(func=cmd_report)
