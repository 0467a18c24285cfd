"""The ASGI guard in front of the server's routes: what is checked before a handler sees a request.

:class:`Guard` wraps the Starlette app (:class:`testbed.serve.app.Server` builds it) and answers,
itself and at once, with a JSON error naming the limit (every one counted in ``/metrics``):

* 503 + ``Connection: close`` past ``Limits.max_connections`` open connections (the count comes
  from the HTTP protocol, :mod:`testbed.serve.connection`, in the scope's ``extensions``);
* 400 for a ``Host`` header that is not the bound address, a localhost name or one of
  ``--allowed-hosts`` (DNS rebinding: a web page on another name cannot read the answers);
* 403 for a POST carrying an ``Origin`` that ``--cors-origin`` does not list, 415 for a POST
  whose ``Content-Type`` is not ``application/json`` (so a web page cannot send a "simple"
  cross-origin POST, which skips the browser's preflight);
* 413 for a body over ``Limits.max_body_bytes``: on ``Content-Length`` before reading anything,
  and for a chunked body as soon as the bytes read pass the limit (nothing more is read; the
  connection is closed);
* 500 ``internal error (id ...)`` for an exception a handler did not catch (the id and the
  traceback are in the log; no exception text in the response).

The body, once read within the limit, is handed to the app as one ``http.request`` message;
later ``receive()`` calls go to the connection (a disconnect is still seen).  CORS headers are
added only when ``--cors-origin`` names origins (Starlette's ``CORSMiddleware``).  Responses of
the generation endpoints are counted by their handlers; the guard counts its own, those of the
other paths and the 500s of uncaught exceptions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from testbed.serve.limits import Limits, host_of
from testbed.serve.metrics import ServerMetrics
from testbed.serve.protocol import ApiError

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: path -> the ``endpoint`` label of ``testbed_requests_total`` (any other path: ``other``)
ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat", "/health": "health",
             "/metrics": "metrics", "/v1/models": "models"}
#: endpoints whose handlers count their own responses
SELF_COUNTING = ("completions", "chat")
#: the key under ``scope["extensions"]`` where the HTTP protocol puts the open-connection count
EXTENSION = "testbed.connection"


class Reject(Exception):
    def __init__(self, error: ApiError, close: bool = False) -> None:
        super().__init__(error.message)
        self.error, self.close = error, close


class Guard:
    def __init__(self, app: ASGIApp, limits: Limits, metrics: ServerMetrics, bind_host: str = "127.0.0.1") -> None:
        self.limits, self.metrics = limits, metrics
        self.hosts = limits.host_names(bind_host)
        self.origins = None if "*" in limits.cors_origins else frozenset(limits.cors_origins)
        if limits.cors_origins:
            from starlette.middleware.cors import CORSMiddleware

            app = CORSMiddleware(app, allow_origins=list(limits.cors_origins), allow_methods=["GET", "POST"],
                                 allow_headers=["content-type", "authorization"])
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = ENDPOINTS.get(scope.get("path", ""), "other")
        try:
            headers = self._check(scope)
            if scope["method"] == "POST":
                body = await self._read_body(headers, receive)
                if body is None:  # the client went away (or the protocol closed it) mid-body
                    return
                receive = _replay(body, receive)
        except Reject as r:
            await self._respond(send, endpoint, r.error, r.close)
            return
        await self._forward(scope, receive, send, endpoint)

    # ------------------------------------------------------------------ checks
    def _check(self, scope: Scope) -> dict[bytes, bytes]:
        lim = self.limits
        conn = (scope.get("extensions") or {}).get(EXTENSION) or {}
        if conn.get("open", 0) > lim.max_connections:
            self.metrics.rejected["connections"] += 1
            raise Reject(ApiError(503, f"too many open connections: {conn['open']} (this server's limit is "
                                       f"{lim.max_connections}, --max-connections); retry later",
                                  kind="unavailable", headers={"Retry-After": "1"}), close=True)
        headers: dict[bytes, bytes] = {}
        for k, v in scope.get("headers", ()):
            headers.setdefault(k, v)
        host = headers.get(b"host")
        if host is None:
            raise Reject(ApiError(400, "the Host header is missing; HTTP/1.1 requests must send it", param="Host"))
        name = host_of(host.decode("latin-1"))
        if self.hosts is not None and name not in self.hosts:
            raise Reject(ApiError(400, f"Host {host.decode('latin-1')[:100]!r} is not accepted; accepted: "
                                       f"{', '.join(sorted(self.hosts))} (start the server with --allowed-hosts "
                                       "to add the names clients use)", param="Host"))
        if scope["method"] != "POST":
            return headers
        origin = headers.get(b"origin")
        if origin is not None and self.origins is not None and origin.decode("latin-1") not in self.origins:
            raise Reject(ApiError(403, f"cross-origin request from Origin {origin.decode('latin-1')[:100]!r} "
                                       "refused: this server sends no CORS permission to it (start it with "
                                       "--cors-origin ORIGIN to allow one)", param="Origin"))
        ctype = headers.get(b"content-type", b"").decode("latin-1")
        media, _, params = ctype.partition(";")
        charset = params.strip().lower().removeprefix("charset=").strip('"') if "charset=" in params.lower() else ""
        if media.strip().lower() != "application/json" or charset not in ("", "utf-8", "utf8"):
            shown = repr(ctype[:100]) if ctype else "missing"
            raise Reject(ApiError(415, f"Content-Type {shown} is not accepted; send Content-Type: application/json "
                                       "(UTF-8)", param="Content-Type"))
        return headers

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes | None:
        limit = self.limits.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise Reject(ApiError(400, f"Content-Length {declared[:40].decode('latin-1')!r} is not a number",
                                      param="Content-Length"), close=True)
            if int(declared) > limit:
                raise Reject(_too_large(f"{int(declared)} bytes (Content-Length)", limit), close=True)
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise Reject(_too_large(f"over {limit} bytes (read so far: {size})", limit), close=True)
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(chunks)

    # ------------------------------------------------------------------ responses
    async def _forward(self, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
        status: list[int] = []

        async def counting_send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                status.append(msg["status"])
                if endpoint not in SELF_COUNTING:
                    self.metrics.requests[(endpoint, msg["status"])] += 1
            await send(msg)

        try:
            await self.app(scope, receive, counting_send)
        except Exception as exc:
            if status:  # Starlette answered already (internal_error below); its log line has the id
                if endpoint in SELF_COUNTING:
                    self.metrics.requests[(endpoint, status[0])] += 1
                return
            await self._respond(send, endpoint, ApiError(500, f"unhandled {type(exc).__name__}", exc=exc), True)

    async def _respond(self, send: Send, endpoint: str, e: ApiError, close: bool = False) -> None:
        self.metrics.requests[(endpoint, e.status)] += 1
        body = json.dumps(e.body(), ensure_ascii=False).encode("utf-8")
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        hdrs += [(k.lower().encode(), v.encode()) for k, v in e.headers.items()]
        if close:
            hdrs.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": e.status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})


def _too_large(what: str, limit: int) -> ApiError:
    return ApiError(413, f"request body is {what}; at most {limit} bytes are accepted (--max-body-bytes)",
                    kind="invalid_request_error")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the buffered body once, then the connection's own messages."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def internal_error(request: Any, exc: Exception) -> Any:
    """Starlette's handler for an uncaught exception: a JSON 500 with an id; the traceback goes to the log."""
    from starlette.responses import JSONResponse

    e = ApiError(500, f"unhandled {type(exc).__name__} on {request.url.path}", exc=exc)
    return JSONResponse(e.body(), status_code=500)
