"""Run the server under uvicorn (``testbed serve``), or in a background thread (tests, benches)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from testbed.engines.base import Engine
from testbed.errors import MissingExtraError
from testbed.serve.batcher import BatchConfig
from testbed.serve.limits import Limits

log = logging.getLogger(__name__)


def _uvicorn_config(server: Any, host: str, port: int, log_level: str = "warning") -> Any:
    """uvicorn's config for a :class:`~testbed.serve.app.Server`: its guarded HTTP protocol and limits."""
    import importlib.util

    if importlib.util.find_spec("httptools") is None:
        raise MissingExtraError("the server's HTTP protocol (timeouts and header limits)", "serve", "httptools")
    import uvicorn

    from testbed.serve.connection import protocol_class

    lim: Limits = server.limits
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return uvicorn.Config(server.app, host=host, port=port, http=protocol_class(lim, server.metrics), loop=loop,
                          log_level=log_level, access_log=False, timeout_graceful_shutdown=5,
                          timeout_keep_alive=lim.keep_alive_s, lifespan="on")  # type: ignore[arg-type]  # call_later: a float works


def _fd_headroom(limits: Limits) -> None:
    """Raise the open-file limit to what the connection cap needs, when allowed; warn when not."""
    try:
        import resource
    except ImportError:  # not on Unix
        return
    need = 2 * limits.max_connections + 128  # connections refused at once past 2x, files, the engine
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < need:
            log.warning("open-file limit %d is below the %d that --max-connections %d needs: lower "
                        "--max-connections or raise the limit (ulimit -n)", target, need, limits.max_connections)


def warm_up(engine: Engine, n: int = 2) -> None:
    """Run a couple of requests unseen so the first client does not pay one-off costs."""
    text = "Hello, how are you?"
    for _ in range(n):
        engine.stream(text).run()


def serve(engine: Engine, batch: BatchConfig, host: str = "127.0.0.1", port: int = 8000,
          model_name: str | None = None, log_level: str = "info", limits: Limits | None = None) -> None:
    """Serve until interrupted (blocks)."""
    import sys

    import uvicorn

    # the batcher's worker thread must get the GIL soon after the loop releases it, not after the
    # default 5 ms switch interval (that would add up to 5 ms to a request's time to first token)
    # (bench: 5 ms -> 0.1 ms cut the p90 of arrival-to-batch-start from 2.1 to 0.5 ms on a busy 2-core box)
    sys.setswitchinterval(1e-4)

    from testbed.serve.app import Server

    server = Server(engine, batch, model_name, limits, bind_host=host)
    _fd_headroom(server.limits)
    uvicorn.Server(_uvicorn_config(server, host, port, log_level)).run()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BackgroundServer:
    """A real server on 127.0.0.1 and a free port, in a thread of this process (tests, benches).

    ``with BackgroundServer(engine, batch) as srv: srv.url ...``; the engine is not closed.
    """

    def __init__(self, engine: Engine, batch: BatchConfig | None = None, host: str = "127.0.0.1",
                 port: int | None = None, model_name: str | None = None, limits: Limits | None = None) -> None:
        import uvicorn

        from testbed.serve.app import Server

        self.server = Server(engine, batch, model_name, limits, bind_host=host)
        self.host, self.port = host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self._uv = uvicorn.Server(_uvicorn_config(self.server, host, self.port))
        self._uv.install_signal_handlers = lambda: None  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._uv.run, name="testbed-server", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uv.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._uv.should_exit = True
        self._thread.join(10)
        self.server.close()
