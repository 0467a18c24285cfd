"""The HTTP/1.1 protocol of ``testbed serve``: uvicorn's httptools protocol with bounded time and size.

uvicorn's own protocol has no timeout before a request's headers are complete (a connection
that sends nothing, or sends its headers a byte a second, stays open for ever) and no limit on
the request line and headers with httptools.  :func:`protocol_class` returns a subclass bound to
one :class:`~testbed.serve.limits.Limits` and one :class:`~testbed.serve.metrics.ServerMetrics`:

* **head timeout**: from a connection's opening (or the first byte of a keep-alive connection's
  next request) to the end of the request's headers, ``head_timeout_s``; **body timeout**: from
  the end of the headers to the end of the body, ``body_timeout_s``.  Past either: a JSON 408
  (when no response has started) and the connection is closed.  The idle keep-alive timeout
  stays uvicorn's (``keep_alive_s``);
* **head size**: the request line plus headers over ``max_header_bytes`` bytes (counted as the
  bytes arrive, so a never-ending header is cut off), or more than ``max_headers`` headers: a
  JSON 431 and the connection is closed;
* **connections**: the open-connection count goes to the ASGI guard in
  ``scope["extensions"]["testbed.connection"]`` (past ``max_connections``: a 503 there); a
  connection opened past twice that is closed at once, so a flood cannot use up the process's
  file descriptors;
* **lingering close**: when a response that closes the connection is sent before the request
  body was read (the guard's 413), the write side is shut first and the rest of the body is read
  and dropped for up to 2 s, so the client reads the 413 instead of a connection reset.

Every one of these events is counted in ``/metrics`` (``testbed_connection_events_total``,
``testbed_open_connections``; the 408 / 431 / 400 responses in ``testbed_requests_total`` with
``endpoint="http"``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from testbed.serve.guard import EXTENSION
from testbed.serve.limits import Limits
from testbed.serve.metrics import ServerMetrics
from testbed.serve.protocol import ApiError

LINGER_S = 2.0
STATUS_TEXT = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}


class _TooManyHeaders(Exception):
    pass


class _Transport:
    """The connection's transport as the request cycle sees it: ``close()`` may linger (see module doc)."""

    def __init__(self, transport: asyncio.Transport, proto: GuardedProtocol) -> None:
        self._t, self._p = transport, proto

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)

    def close(self) -> None:
        self._p.close_connection()


class GuardedProtocol(HttpToolsProtocol):
    limits: Limits = Limits()
    metrics: ServerMetrics = ServerMetrics()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but has the methods
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = True
        self._head_bytes = 0
        self._n_headers = 0
        self._body_pending = False
        self._lingering = False
        self._status: tuple[int, str] | None = None
        super().connection_made(_Transport(self._raw, self))  # type: ignore[arg-type]
        m = self.metrics
        m.open_connections = len(self.connections)
        if len(self.connections) > 2 * self.limits.max_connections:
            m.connection_events["refused_at_accept"] += 1
            self._raw.close()
            return
        self._arm(self.limits.head_timeout_s, "head_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        self.metrics.open_connections = len(self.connections)

    # ------------------------------------------------------------------ timers
    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, what: str) -> None:
        self._timer = None
        if self._raw.is_closing():
            return
        self.metrics.connection_events[what] += 1
        if self._lingering:
            self._raw.close()
            return
        cycle = self.cycle
        if what == "head_timeout" or (cycle is not None and not cycle.response_started):
            head = what == "head_timeout"
            limit = self.limits.head_timeout_s if head else self.limits.body_timeout_s
            part, flag = ("line and headers", "--head-timeout") if head else ("body", "--body-timeout")
            self._refuse(408, f"the request {part} did not arrive within {limit:g} s ({flag}); "
                              "the connection is closed")
        else:
            self._raw.close()

    # ------------------------------------------------------------------ parsing
    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a refused body: dropped
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.limits.max_header_bytes and not self._raw.is_closing():
            self.metrics.connection_events["head_too_large"] += 1
            self._refuse(431, f"the request line and headers are over {self.limits.max_header_bytes} bytes "
                              "(--max-header-bytes); the connection is closed")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {EXTENSION: {"open": len(self.connections)}}
        self._in_head, self._n_headers = True, 0
        if self._timer is None:  # the next request of a keep-alive connection
            self._arm(self.limits.head_timeout_s, "head_timeout")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._n_headers += 1
        if self._n_headers > self.limits.max_headers:
            self.metrics.connection_events["too_many_headers"] += 1
            self._status = (431, f"more than {self.limits.max_headers} headers (--max-headers); the connection "
                                 "is closed")
            raise _TooManyHeaders
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        self._body_pending = True
        self._arm(self.limits.body_timeout_s, "body_timeout")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._body_pending = False
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._in_head, self._head_bytes = True, 0

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request the parser refused (and to an exception in a parser callback)."""
        status, text = self._status or (400, "malformed HTTP request: the parser refused it")
        self._status = None
        self._refuse(status, text)

    # ------------------------------------------------------------------ answers
    def _refuse(self, status: int, message: str) -> None:
        self._disarm()
        self.metrics.requests[("http", status)] += 1
        body = json.dumps(ApiError(status, message).body()).encode()
        head = (f"HTTP/1.1 {status} {STATUS_TEXT[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
        self._raw.write(head + body)
        self._raw.close()

    def close_connection(self) -> None:
        """The request cycle closes the connection: linger if the client may still be sending its body."""
        if not self._body_pending or self._raw.is_closing() or not self._raw.can_write_eof():
            self._raw.close()
            return
        self._lingering = True
        self._raw.write_eof()
        self._raw.resume_reading()
        self._arm(LINGER_S, "lingering_close")


def protocol_class(limits: Limits, metrics: ServerMetrics) -> type[GuardedProtocol]:
    """A :class:`GuardedProtocol` subclass bound to one server's limits and metrics (uvicorn's ``http=``)."""
    return type("TestbedHttpProtocol", (GuardedProtocol,), {"limits": limits, "metrics": metrics})
