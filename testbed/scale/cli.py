"""``testbed plan`` (and nothing that needs the ``scale`` extra): arguments and the command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from testbed.scale.plan import Scaling


def add_parser(sub: Any) -> None:
    p = sub.add_parser("plan", help="replicas, cores and cost for a traffic rate, from find-peak results",
                       description="From the find_peak.json of one or more configurations (testbed bench --find-peak "
                                   "--out DIR, one replica each): replicas needed for --rate under --slo with the "
                                   "headroom rule, cores, cost per million requests; a Markdown table and a plot.")
    p.add_argument("--results", nargs="+", required=True, help="find-peak output directories (or find_peak.json files)")
    p.add_argument("--rate", type=float, required=True, help="the traffic to plan for (req/s)")
    p.add_argument("--slo", required=True, help="bounds in ms, e.g. ttft=200,e2e=2000 (no stricter than the peaks')")
    p.add_argument("--headroom", type=float, default=0.25,
                   help="a replica is planned at <= (1 - headroom) x its peak (default 0.25)")
    p.add_argument("--core-hour-price", type=float, default=None, help="price of one core for one hour (any currency)")
    p.add_argument("--cores-per-replica", type=int, default=None,
                   help="cores of one replica (default: the engine's threads in the result's signature)")
    p.add_argument("--scaling", nargs=2, metavar=("ONE", "MANY"), default=None,
                   help="find-peak results of the same configuration behind the same serving stack on 1 and on "
                        "--scaling-replicas replicas: per-replica efficiency = peak_N / (N x peak_1), applied "
                        "from 2 replicas on")
    p.add_argument("--scaling-replicas", type=int, default=2, help="replicas of the --scaling MANY run (default 2)")
    p.add_argument("--efficiency", type=float, default=None,
                   help="per-replica efficiency from 2 replicas on, given instead of --scaling "
                        "(default: 1, linear, an assumption and an upper bound)")
    p.add_argument("--out", default=None, help="directory for plan.md, plan.json and replicas_vs_rate.png")
    p.set_defaults(func=cmd_plan)


def scaling_of(args: argparse.Namespace) -> Scaling:
    """The plan's scaling factor: measured (--scaling ONE MANY), given (--efficiency), else the stated default."""
    from testbed.errors import ConfigError
    from testbed.scale import plan as P

    if args.scaling and args.efficiency is not None:
        raise ConfigError("efficiency", args.efficiency, "either --efficiency or --scaling ONE MANY, not both")
    if args.scaling:
        one, many = (P.load_peak(Path(d), per_replica=False) for d in args.scaling)
        return P.measured_scaling(one, many, args.scaling_replicas)
    if args.efficiency is not None:
        return P.Scaling(args.efficiency, args.scaling_replicas, "given (--efficiency)")
    return P.Scaling(replicas=args.scaling_replicas)


def cmd_plan(args: argparse.Namespace) -> int:
    from testbed.errors import ConfigError
    from testbed.io import write_json_atomic, write_text_atomic
    from testbed.metrics.summary import SLO
    from testbed.scale import plan as P

    slo = SLO.parse(args.slo)
    if slo.is_empty:
        raise ConfigError("slo", args.slo, "at least one bound, e.g. ttft=200,e2e=2000")
    if args.core_hour_price is not None and not args.core_hour_price >= 0:
        raise ConfigError("core_hour_price", args.core_hour_price, "a non-negative price")
    results = [P.load_peak(Path(d), args.cores_per_replica) for d in args.results]
    scaling = scaling_of(args)
    rows, refused = P.plan(results, args.rate, slo, args.headroom, args.core_hour_price, scaling)
    md = P.render(rows, refused, args.rate, slo, args.headroom, args.core_hour_price, scaling)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        planned = [r for r in results if r.label in {row.label for row in rows}]
        png = P.plot(planned, args.rate, args.headroom, out / "replicas_vs_rate.png", scaling) if planned else None
        write_json_atomic(out / "plan.json", {"rate": args.rate, "slo": slo.to_dict(), "headroom": args.headroom,
                                              "core_hour_price": args.core_hour_price,
                                              **P.to_json(rows, refused, scaling)})
        if png:
            md += f"\n\nReplicas vs rate: {png}"
        write_text_atomic(out / "plan.md", md + "\n")
    print(md)
    return 0 if rows else 2
