"""``testbed bench`` beyond in-process SingleStream: ``--url`` (any OpenAI-compatible server) or
``--target inproc``, the four scenarios, ``--find-peak``.  Thin: builds the objects, calls the library."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from testbed.client.loadgen import SCENARIOS


def add_load_args(b: argparse.ArgumentParser) -> None:
    g = b.add_argument_group("load (--url / --target inproc; scenarios server, offline, concurrency)")
    g.add_argument("--url", default=None,
                   help="an OpenAI-compatible server (testbed serve, vLLM, TGI, Triton's frontend), "
                        "e.g. http://127.0.0.1:8000")
    g.add_argument("--target", default=None, choices=["http", "inproc"],
                   help="http (with --url) or inproc: the same scenarios on the engine, through the server's "
                        "batcher without HTTP (default: http with --url; inproc otherwise)")
    g.add_argument("--rate", type=float, default=None,
                   help="server scenario: Poisson arrivals per second (--find-peak: the first trial's rate)")
    g.add_argument("--concurrency", type=int, default=1, help="concurrency scenario: closed-loop users (default 1)")
    g.add_argument("--duration", type=float, default=None,
                   help="seconds of load instead of --num-requests (--find-peak: each trial's length, default 30)")
    g.add_argument("--slo", default="", help="bounds in ms, e.g. ttft=200,tpot=50,e2e=2000 (goodput, tail claims)")
    g.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals (default 0)")
    g.add_argument("--find-peak", action="store_true",
                   help="search the highest Poisson rate meeting --slo with a valid MLPerf p99 claim (Server rule): "
                        "trials of max(--peak-min-queries, rate x --duration) requests, doubling, then bisecting")
    g.add_argument("--peak-min-queries", type=int, default=None,
                   help="--find-peak: requests per trial at least (default: 459, the fewest a valid p99 claim needs; "
                        "fewer makes short trials whose claims cannot be valid)")
    g.add_argument("--peak-trials", type=int, default=8, help="--find-peak: doubling/halving trials at most")
    g.add_argument("--peak-steps", type=int, default=4, help="--find-peak: bisection steps (default 4)")
    g.add_argument("--api", default="auto", choices=["auto", "completions", "chat"],
                   help="endpoint: chat for message datasets, completions for text (auto, default)")
    g.add_argument("--served-model", default=None,
                   help="the model name to send (default: --model); a vLLM/TGI server's own model id")
    g.add_argument("--http-client", default="lean", choices=["lean", "aiohttp", "httpx"],
                   help="lean (asyncio + httptools, the default), or aiohttp / httpx for comparison")
    g.add_argument("--client-procs", type=int, default=1,
                   help="server scenario: client processes, each with its own event loop and an independent "
                        "share of the Poisson stream (default 1)")
    g.add_argument("--client-limit-ms", type=float, default=None,
                   help="flag the run client-limited when the p99 dispatch delay or p99 event-loop lag passes "
                        "this (ms; default 1)")
    g.add_argument("--ignore-eos", action="store_true",
                   help="ask for exactly --max-new-tokens tokens per answer (vLLM's ignore_eos; refused by "
                        "engines that cannot mask EOS)")
    g.add_argument("--return-timing", action="store_true",
                   help="ask a testbed server for its engine-side timestamps (kept in each record's extra)")
    g.add_argument("--max-batch-size", type=int, default=1, help="inproc target: rows per batch at most")
    g.add_argument("--batching", choices=["static", "continuous"], default="static",
                   help="inproc target: static batches, or continuous (rows join and leave between steps)")
    g.add_argument("--max-wait-ms", type=float, default=2.0, help="inproc target: batch fill wait (ms)")
    g.add_argument("--max-queue", type=int, default=1024, help="inproc target: admission queue bound")
    d = b.add_argument_group("distributed load (Locust; pip install 'testbed[scale]')")
    d.add_argument("--workers", type=int, default=None,
                   help="with --url: run the scenario from N Locust worker processes under a Locust master, "
                        "each with an independent seeded share of the schedule; one merged report (--find-peak: "
                        "each trial from N local workers)")
    d.add_argument("--master", action="store_true",
                   help="with --workers N: start only the Locust master and wait for N workers from other "
                        "machines (testbed bench --worker --master-host THIS_HOST)")
    d.add_argument("--master-bind-host", default="127.0.0.1",
                   help="--master: the address the master listens on (default 127.0.0.1; 0.0.0.0 for other machines)")
    d.add_argument("--master-port", type=int, default=None, help="the Locust master's port (default: a free one; "
                                                                 "5557 with --master / --worker)")
    d.add_argument("--worker", action="store_true",
                   help="be one Locust worker of a master on --master-host (another machine's testbed bench --master)")
    d.add_argument("--master-host", default=None, help="--worker: the master's address")


def _describe(engine: Any) -> dict[str, Any]:
    from testbed.errors import ModelNotFoundError

    try:
        return dict(engine.describe())
    except ModelNotFoundError:  # a model-free engine (fake, null) has no checkpoint to hash
        return {"engine": engine.name, **engine.config.to_dict(), "model_name": engine.model_info.name}


def _print_trial(row: dict[str, Any]) -> None:
    import sys

    print(f"find-peak: {row['rate']:.4g} req/s, {row['queries']} requests -> "
          f"{'pass' if row['passed'] else 'fail (' + row['why'] + ')'}; tail claim {row['claim_why']}", file=sys.stderr)


def wants_load(args: argparse.Namespace) -> bool:
    """True unless this is the classic in-process SingleStream job (no --url, no --target, no peak search)."""
    return bool(args.url or args.target or args.find_peak or args.scenario != "singlestream" or args.worker)


def client_limits(args: argparse.Namespace, target: str) -> Any:
    """Check the client options against the scenario and target; the client-limited thresholds."""
    from testbed.errors import TestbedError
    from testbed.metrics.saturation import ClientLimits

    if args.client_procs != 1 and not (args.scenario == "server" or args.find_peak):
        raise TestbedError(f"--client-procs {args.client_procs}: several client processes split a Poisson stream; "
                           "use it with --scenario server (or --find-peak)")
    if args.client_procs != 1 and target != "http":
        raise TestbedError("--client-procs needs --url: an in-process target cannot be shared between processes")
    if args.client_limit_ms is None:
        return ClientLimits()
    return ClientLimits(args.client_limit_ms, args.client_limit_ms)


def run_locust_worker(args: argparse.Namespace) -> dict[str, Any]:
    """``--worker --master-host H``: one Locust worker of testbed's locustfile, until its master ends."""
    import subprocess

    from testbed.errors import TestbedError
    from testbed.scale import require

    require("testbed bench --worker", "locust")
    from testbed.scale.locust_run import worker_cmd

    if not args.master_host:
        raise TestbedError("--worker needs --master-host (the machine running testbed bench --workers N --master)")
    rc = subprocess.call(worker_cmd(args.master_host, args.master_port or 5557))
    return {"markdown": f"Locust worker ended (exit code {rc})"}


def cmd_load(args: argparse.Namespace, config: Any, default_dataset: str) -> dict[str, Any]:
    from testbed.client.bench import load_bench
    from testbed.client.loadgen import LoadSpec
    from testbed.client.peak import PeakSearch, find_peak
    from testbed.datasets import load_dataset
    from testbed.errors import TestbedError
    from testbed.metrics.summary import SLO

    if args.worker:
        return run_locust_worker(args)
    if args.scenario not in SCENARIOS:
        raise TestbedError(f"--scenario {args.scenario!r}: give one of {', '.join(SCENARIOS)}")
    if args.workers is not None and (not args.url or (args.find_peak and args.master)):
        raise TestbedError(f"--workers {args.workers}: give --url (Locust workers load an HTTP server); "
                           "--find-peak runs its workers on this machine (without --master)")
    target = args.target or ("http" if args.url else "inproc")
    if target == "http" and not args.url:
        raise TestbedError("--target http needs --url (e.g. --url http://127.0.0.1:8000)")
    if target == "inproc" and args.url:
        raise TestbedError("--target inproc runs the engine in this process: drop --url")
    slo = SLO.parse(args.slo)
    if args.find_peak and args.num_requests:
        raise TestbedError("--find-peak sizes each trial by --duration and --peak-min-queries: drop --num-requests")
    limits = client_limits(args, target)
    # --find-peak: the spec gives size, warm-up and seed; each trial sets scenario=server and its rate
    spec = LoadSpec(scenario=args.scenario if not args.find_peak else "singlestream", num_requests=args.num_requests,
                    duration_s=args.duration, rate=args.rate if not args.find_peak else None,
                    concurrency=args.concurrency, warmup=args.warmup, seed=args.seed,
                    client_procs=args.client_procs)
    examples = load_dataset(args.dataset or default_dataset)
    if args.num_requests and args.num_requests < len(examples) and not args.duration:
        examples = examples[: args.num_requests]
    max_tokens = args.max_new_tokens
    if target == "http":
        from testbed.client.targets import HttpTarget

        model = args.served_model or args.model

        def make() -> Any:
            return HttpTarget(args.url, model, api=args.api, max_tokens=max_tokens,
                              return_timing=args.return_timing, client=args.http_client,
                              ignore_eos=args.ignore_eos)

        describe: dict[str, Any] = {"target": f"http {args.url}", "served_model": model,
                                    "http_client": args.http_client, "max_tokens": max_tokens,
                                    "ignore_eos": args.ignore_eos}
        engine = None
    else:
        from testbed.client.targets import InprocTarget
        from testbed.engines.registry import create_engine
        from testbed.serve.batcher import BatchConfig

        batch = BatchConfig(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                            max_queue=args.max_queue, batching=args.batching)
        engine = create_engine(config)
        batch.check(engine)

        def make() -> Any:
            return InprocTarget(engine, batch, max_tokens=max_tokens, ignore_eos=args.ignore_eos)

        describe = {**_describe(engine), **batch.to_dict(), "target": f"inproc {config.label()} {batch.label()}"}
    out = Path(args.out) if args.out else None
    search = PeakSearch(start_rate=args.rate, trial_s=args.duration or 30.0, min_queries=args.peak_min_queries,
                        max_trials=args.peak_trials, bisect_steps=args.peak_steps) if args.find_peak else None
    if args.workers is not None and search is not None:
        from testbed.scale.locust_run import locust_find_peak

        return locust_find_peak(make, examples, spec, slo, {**describe, "workers": args.workers}, args.workers, out,
                                search, on_trial=_print_trial)
    if args.workers is not None:
        from testbed.scale.locust_run import locust_bench

        port = args.master_port or (5557 if args.master else None)
        return locust_bench(make(), examples, spec, slo, {**describe, "workers": args.workers}, args.workers, out,
                            local_workers=not args.master, bind_host=args.master_bind_host, port=port)
    try:
        if search is not None:
            return find_peak(make, examples, spec, slo, describe, out, progress=not args.no_progress, search=search,
                             on_trial=_print_trial)
        return load_bench(make, examples, spec, slo, describe, out, progress=not args.no_progress, limits=limits)
    finally:
        if engine is not None:
            engine.close()
