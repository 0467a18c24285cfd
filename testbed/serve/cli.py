"""``testbed serve``: arguments and the command (registered by :mod:`testbed.cli`)."""

from __future__ import annotations

import argparse
import sys


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
    g.add_argument("--timeout", type=float, default=60.0, help="per-request deadline in seconds (60)")
    g.add_argument("--served-model-name", default=None, help="the model name clients send (default: --model)")
    g.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.set_defaults(on_overflow="refuse")  # an over-long prompt is a 400, as on other OpenAI servers


def cmd_serve(args: argparse.Namespace, engine: object) -> int:
    from testbed.engines.base import Engine
    from testbed.serve.batcher import BatchConfig
    from testbed.serve.run import serve, warm_up

    assert isinstance(engine, Engine)
    batch = BatchConfig(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                        max_queue=args.max_queue, timeout_s=args.timeout, batching=args.batching)
    batch.check(engine)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host}: the server has no authentication", file=sys.stderr)
    warm_up(engine)
    print(f"serving {args.served_model_name or args.model} on {engine.config.label()} ({batch.label()}) at "
          f"http://{args.host}:{args.port}  (POST /v1/completions, /v1/chat/completions; GET /health, /metrics)",
          file=sys.stderr)
    serve(engine, batch, args.host, args.port, args.served_model_name, args.log_level)
    return 0
