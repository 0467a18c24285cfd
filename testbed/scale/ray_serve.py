"""``testbed serve --backend ray``: the engine as a Ray Serve deployment, N replicas behind Ray's HTTP proxy.

Each replica is the existing server: it builds the engine (``EngineConfig``: same model, engine,
precision, ``threads``), runs the warm-up, and serves the same Starlette app
(:class:`testbed.serve.app.Server`) through ``serve.ingress`` (``__serve_build_asgi_app__``: the
app is built in the replica, after its engine) -- the same OpenAI routes, streaming included,
and the same admission: each replica's own bounded queue answers 429 + ``Retry-After`` when
full.  Ray may send a replica up to twice the requests it can hold (``max_ongoing_requests =
2 x (max_queue + max_batch_size)``), so a full replica refuses (429) before Ray's proxy would hold
requests back in a queue of its own.

Pinning: a replica reserves ``threads`` CPUs from Ray (``num_cpus``), runs its engine on
``threads`` intra-op threads, and binds (``os.sched_setaffinity``) to ``threads`` cores chosen by
its rank on the node, so two replicas' engines do not share cores.  ``pin`` says which threads:
``engine`` (default) binds the thread that builds the engine, so the engine's threads (started
from it) inherit the cores, while the ~30 threads Ray started before (its core worker, gRPC, the
replica's event loop) stay free; ``process`` binds every thread of the replica process (Ray's
too, and every thread started later); ``none`` binds nothing.

Priority: Ray starts its workers (replicas, proxy, controller) at niceness 15 (``worker_niceness``),
so on a machine with other work they get a small share of the cores (a nice-15 process weighs
36 against a nice-0 one's 1024 in Linux's scheduler) while ``testbed serve`` runs at 0.  A local
cluster started here runs its workers at niceness 0 (``RAY_worker_niceness``; an environment that
sets it wins); an existing cluster (``--ray-address``) keeps its own setting.  ``lean`` sets the
Ray Serve switches that cut per-request work (:data:`LEAN_ENV`: user code on the replica's main
loop, the router on the proxy's loop, buffered request logs, gRPC between proxy and replica) --
also only for a local cluster, whose processes inherit this environment.  ``/health`` and
``/metrics`` answer for the replica that served them (``replica`` in the JSON, a comment line
in the Prometheus text).  Autoscaling: ``--min-replicas`` / ``--max-replicas`` /
``--target-ongoing-requests`` become Ray Serve's ``autoscaling_config``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from testbed.config import EngineConfig
from testbed.errors import ConfigError
from testbed.scale import require
from testbed.serve.batcher import BatchConfig

log = logging.getLogger(__name__)
APP_NAME = "testbed"
PIN_MODES = ("engine", "process", "none")
# Ray Serve 2.60's RAY_SERVE_THROUGHPUT_OPTIMIZED bundle without direct ingress (which drops the one
# HTTP proxy: each replica would listen on a port of its own, and one URL no longer reaches them all)
LEAN_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
            "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000", "RAY_SERVE_LOG_TO_STDERR": "0",
            "RAY_SERVE_PROXY_USE_GRPC": "1"}


@dataclass(frozen=True)
class RaySpec:
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    address: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    pin: str = "engine"
    lean: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.replicas, int) or self.replicas < 1:
            raise ConfigError("replicas", self.replicas, "a positive integer")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ConfigError("min_replicas/max_replicas", (self.min_replicas, self.max_replicas),
                              "both set (autoscaling) or both unset (--replicas N fixed)")
        if self.min_replicas is not None and self.max_replicas is not None \
                and not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas == 0:
            raise ConfigError("min_replicas/max_replicas", (self.min_replicas, self.max_replicas),
                              "0 <= min <= max, max >= 1")
        if self.pin not in PIN_MODES:
            raise ConfigError("pin", self.pin, " | ".join(PIN_MODES))
        if self.target_ongoing_requests is not None and not self.target_ongoing_requests > 0:
            raise ConfigError("target_ongoing_requests", self.target_ongoing_requests, "a positive number")

    def deployment_options(self, threads: int, batch: BatchConfig) -> dict[str, Any]:
        opts: dict[str, Any] = {"ray_actor_options": {"num_cpus": threads},
                                "max_ongoing_requests": 2 * (batch.max_queue + batch.max_batch_size)}
        if self.min_replicas is not None:
            auto: dict[str, Any] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas}
            if self.target_ongoing_requests is not None:
                auto["target_ongoing_requests"] = self.target_ongoing_requests
            opts["autoscaling_config"] = auto
        else:
            opts["num_replicas"] = self.replicas
        return opts


def pin(threads: int, rank: int, mode: str = "engine") -> list[int] | None:
    """Bind to ``threads`` cores chosen by ``rank`` (wrapping around): the calling thread (``engine``: the
    threads it starts inherit them) or every thread of the process (``process``); None where unsupported
    or ``mode`` is ``none``.  (Linux's affinity is per thread: ``sched_setaffinity(0)`` binds the caller only.)"""
    if mode not in PIN_MODES:
        raise ConfigError("pin", mode, " | ".join(PIN_MODES))
    if mode == "none" or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    chosen = [cores[(rank * threads + i) % len(cores)] for i in range(min(threads, len(cores)))]
    os.sched_setaffinity(0, chosen)
    if mode == "process":
        for tid in thread_ids():
            try:
                os.sched_setaffinity(tid, chosen)
            except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile
                pass
    return chosen


def thread_ids() -> list[int]:
    """This process's thread ids (Linux ``/proc/self/task``; the threading module knows only its own threads)."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return []


class Replica:
    """One replica: engine, warm-up, the testbed server's ASGI app (built by Ray Serve in the replica)."""

    def __init__(self, config: dict[str, Any], batch: dict[str, Any], model_name: str | None,
                 pin_mode: str = "engine") -> None:
        from ray import serve

        from testbed.engines.registry import create_engine
        from testbed.serve.app import Server
        from testbed.serve.run import warm_up

        sys.setswitchinterval(1e-4)  # as `testbed serve`: the batcher thread gets the GIL soon
        cfg = EngineConfig(**config)
        threads = cfg.threads or 1
        ctx = serve.get_replica_context()
        rank = getattr(getattr(ctx, "rank", None), "local_rank", 0) or 0
        self.cores = pin(threads, rank, pin_mode)
        engine = create_engine(cfg)
        self.server = Server(engine, BatchConfig(**batch), model_name)
        self.server.replica = (f"{ctx.replica_id.unique_id} (rank {rank}, cores {self.cores}, pin {pin_mode}, "
                               f"nice {os.nice(0)})")
        warm_up(engine)
        log.info("replica %s ready", self.server.replica)

    def __serve_build_asgi_app__(self) -> Any:
        return self.server.app

    def __del__(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.close()


def deploy(config: EngineConfig, batch: BatchConfig, spec: RaySpec, model_name: str | None = None) -> Any:
    """Start (or join, ``spec.address``) Ray, run the deployment on ``spec.host:spec.port``; returns its handle."""
    require("testbed serve --backend ray", "ray")
    import ray
    from ray import serve

    threads = config.threads or 1
    if not ray.is_initialized():  # an existing cluster (--ray-address), else a local one
        if spec.address is None:  # the local cluster's processes inherit this environment
            os.environ.setdefault("RAY_worker_niceness", "0")
            if spec.lean:
                os.environ.update(LEAN_ENV)
        ray.init(address=spec.address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": spec.host, "port": spec.port})
    cls = serve.deployment(name="testbed", **spec.deployment_options(threads, batch))(serve.ingress()(Replica))
    cfg = {**config.to_dict(), "threads": threads}
    # every field (BatchConfig.to_dict describes a run and leaves retry_after_s out: a replica would answer
    # Retry-After: 1 whatever the server was given)
    app = cls.bind(cfg, dataclasses.asdict(batch), model_name, spec.pin)
    return serve.run(app, name=APP_NAME, route_prefix="/")


def shutdown() -> None:
    from ray import serve

    serve.shutdown()
    import ray

    ray.shutdown()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def serve_forever(config: EngineConfig, batch: BatchConfig, spec: RaySpec, model_name: str | None = None) -> None:
    """Deploy, then wait; SIGINT or SIGTERM shuts Serve and the local Ray down (also where a launching shell set
    SIGINT to be ignored, as it does for background jobs: Ray's agents would outlive a plain kill)."""
    deploy(config, batch, spec, model_name)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    finally:
        shutdown()
