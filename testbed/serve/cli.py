"""``testbed serve``: arguments and the command (registered by :mod:`testbed.cli`)."""

from __future__ import annotations

import argparse
import sys

from testbed.errors import ConfigError
from testbed.serve.limits import Limits


def add_serve_args(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    g.add_argument("--max-batch-size", type=int, default=1, help="rows decoded together at most (1)")
    g.add_argument("--batching", choices=["static", "continuous"], default="static",
                   help="static: a batch decodes to its end while new requests wait; continuous: requests join "
                        "the running batch between steps and finished rows leave at once (default static)")
    g.add_argument("--max-wait-ms", type=float, default=2.0,
                   help="dynamic batching: how long the oldest waiting request may wait for a batch to fill (2 ms)")
    g.add_argument("--max-queue", type=int, default=64,
                   help="admission: waiting requests past which new ones get 429 + Retry-After at once (64)")
    g.add_argument("--max-queued-tokens", type=int, default=None,
                   help="admission by cost: input tokens waiting past which a new request gets 429 (default: no bound)")
    g.add_argument("--prefill-chunk", type=int, default=256,
                   help="while rows decode, a new decoder-only prompt is prefilled this many tokens per step, so "
                        "one long prompt cannot stall the others (default 256; 0: all at once)")
    g.add_argument("--timeout", type=float, default=60.0, help="per-request deadline in seconds (60)")
    g.add_argument("--served-model-name", default=None, help="the model name clients send (default: --model)")
    g.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    r = s.add_argument_group("replicas (Ray Serve; pip install 'testbed[scale]')")
    r.add_argument("--backend", choices=["uvicorn", "ray"], default="uvicorn",
                   help="uvicorn: one server process (default); ray: a Ray Serve deployment of --replicas replicas, "
                        "each the same server with its own engine (--threads threads, pinned) and queue")
    r.add_argument("--replicas", type=int, default=1, help="--backend ray: replicas (fixed; default 1)")
    r.add_argument("--ray-address", default=None, help="--backend ray: an existing Ray cluster (default: a local one)")
    r.add_argument("--min-replicas", type=int, default=None, help="--backend ray: autoscaling lower bound")
    r.add_argument("--max-replicas", type=int, default=None, help="--backend ray: autoscaling upper bound")
    r.add_argument("--target-ongoing-requests", type=float, default=None,
                   help="--backend ray, autoscaling: ongoing requests per replica Ray Serve scales to")
    r.add_argument("--ray-pin", choices=["engine", "process", "none"], default="engine",
                   help="--backend ray: bind each replica's engine threads to its cores (default), every thread "
                        "of the replica process (Ray's too), or none")
    r.add_argument("--ray-lean", action="store_true",
                   help="--backend ray, local cluster: Ray Serve's switches that cut per-request work (user code on "
                        "the replica's loop, gRPC from the proxy, buffered request logs)")
    s.set_defaults(on_overflow="refuse")  # an over-long prompt is a 400, as on other OpenAI servers
    d = Limits()
    lim = s.add_argument_group("limits and safety (README: Limits and safety)")
    lim.add_argument("--max-input-tokens", type=int, default=None,
                     help="prompt tokens at most, below the model's own limit (longer prompts: 400 naming it)")
    lim.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                     help=f"request body at most, checked before reading (413 past it; {d.max_body_bytes})")
    lim.add_argument("--max-json-depth", type=int, default=d.max_json_depth,
                     help=f"nesting of JSON arrays / objects at most (400 past it; {d.max_json_depth})")
    lim.add_argument("--max-header-bytes", type=int, default=d.max_header_bytes,
                     help=f"request line + headers at most (431 past it; {d.max_header_bytes})")
    lim.add_argument("--max-headers", type=int, default=d.max_headers,
                     help=f"headers per request at most (431 past it; {d.max_headers})")
    lim.add_argument("--head-timeout", type=float, default=d.head_timeout_s,
                     help=f"seconds for a request line and headers to arrive (408 and close; {d.head_timeout_s:g})")
    lim.add_argument("--body-timeout", type=float, default=d.body_timeout_s,
                     help=f"seconds for a request body to arrive after its headers (408 and close; "
                          f"{d.body_timeout_s:g})")
    lim.add_argument("--keep-alive-timeout", type=float, default=d.keep_alive_s,
                     help=f"seconds an idle keep-alive connection stays open ({d.keep_alive_s:g})")
    lim.add_argument("--max-connections", type=int, default=d.max_connections,
                     help=f"open connections past which requests get 503 (past twice it, connections are closed at "
                          f"once; {d.max_connections})")
    lim.add_argument("--allowed-hosts", default="",
                     help="comma-separated Host names accepted besides the bound address and localhost (* = any)")
    lim.add_argument("--cors-origin", action="append", default=[],
                     help="an origin (http://host:port) allowed to call the API from a browser (repeatable; "
                          "default: none, no CORS headers)")


def limits_from_args(args: argparse.Namespace) -> Limits:
    return Limits(max_body_bytes=args.max_body_bytes, max_json_depth=args.max_json_depth,
                  max_header_bytes=args.max_header_bytes, max_headers=args.max_headers,
                  head_timeout_s=args.head_timeout, body_timeout_s=args.body_timeout,
                  keep_alive_s=args.keep_alive_timeout, max_connections=args.max_connections,
                  allowed_hosts=tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip()),
                  cors_origins=tuple(args.cors_origin))


def check_max_input(engine: object, max_input_tokens: int | None) -> None:
    """``--max-input-tokens`` is a serving limit below the model's context: refuse one above it."""
    from testbed.engines.base import Engine

    assert isinstance(engine, Engine)
    if max_input_tokens is not None and max_input_tokens > engine.model_max_input:
        raise ConfigError("max_input_tokens", max_input_tokens,
                          f"an integer in [1, {engine.model_max_input}] (this model's input limit with "
                          f"--max-new-tokens {engine.config.max_new_tokens})")


def batch_config(args: argparse.Namespace) -> object:
    from testbed.serve.batcher import BatchConfig

    return BatchConfig(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                       max_queue=args.max_queue, timeout_s=args.timeout, batching=args.batching,
                       max_queued_tokens=args.max_queued_tokens, prefill_chunk=args.prefill_chunk or None)


def cmd_serve_ray(args: argparse.Namespace, config: object) -> int:
    """``--backend ray``: the deployment on Ray Serve (the engine is built in each replica, not here)."""
    from testbed.config import EngineConfig
    from testbed.serve.batcher import BatchConfig

    assert isinstance(config, EngineConfig)
    from testbed.scale.ray_serve import RaySpec, serve_forever

    spec = RaySpec(replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                   target_ongoing_requests=args.target_ongoing_requests, address=args.ray_address,
                   host=args.host, port=args.port, pin=args.ray_pin, lean=args.ray_lean)
    batch = batch_config(args)
    assert isinstance(batch, BatchConfig)
    n = f"{spec.min_replicas}..{spec.max_replicas} (autoscaling)" if spec.min_replicas is not None else spec.replicas
    print(f"serving {args.served_model_name or args.model} on Ray Serve: {n} replicas of {config.label()} "
          f"({batch.label()}, {config.threads or 1} thread(s) each) at http://{args.host}:{args.port}", file=sys.stderr)
    serve_forever(config, batch, spec, args.served_model_name)
    return 0


def cmd_serve(args: argparse.Namespace, engine: object) -> int:
    from testbed.engines.base import Engine
    from testbed.serve.batcher import BatchConfig
    from testbed.serve.run import serve, warm_up

    assert isinstance(engine, Engine)
    check_max_input(engine, args.max_input_tokens)
    limits = limits_from_args(args)
    batch = BatchConfig(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                        max_queue=args.max_queue, timeout_s=args.timeout, batching=args.batching,
                        max_queued_tokens=args.max_queued_tokens, prefill_chunk=args.prefill_chunk or None)
    batch.check(engine)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host}: the server has no authentication", file=sys.stderr)
        if args.host in ("0.0.0.0", "::") and not limits.allowed_hosts:
            print("warning: only requests with a localhost Host header are answered: list the names clients use "
                  "in --allowed-hosts", file=sys.stderr)
    warm_up(engine)
    print(f"serving {args.served_model_name or args.model} on {engine.config.label()} ({batch.label()}) at "
          f"http://{args.host}:{args.port}  (POST /v1/completions, /v1/chat/completions; GET /health, /metrics)",
          file=sys.stderr)
    serve(engine, batch, args.host, args.port, args.served_model_name, args.log_level, limits)
    return 0
