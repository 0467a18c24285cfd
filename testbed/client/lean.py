"""A lean streaming HTTP/1.1 client for the load generator: one host, a keep-alive pool,
an asyncio :class:`~asyncio.Protocol` per connection and httptools' C parser.

Why: aiohttp spends about 1.2 ms of client CPU per streamed request on this project's 2-core
machine (``bench/results/serving.md``), so the client itself saturates near 400 req/s.  Per
request this client does one ``transport.write`` of prebuilt bytes, httptools parsing of each
received segment (chunked transfer decoding included), a split into lines and the shared SSE
reader (:class:`testbed.client.sse.SseReader`) -- no per-line coroutine, no header objects, no
cookie jar, one timer handle for the deadline.

Receipt times: one ``now_ns()`` per received segment, taken in ``data_received`` (when the loop
hands the bytes over); every line of that segment shares it, since they arrived together.

Sends from the timer thread (:meth:`LeanClient.start_from_thread`): the load generator's Poisson
timer thread can write a prebuilt request itself, on an idle connection, the moment it wakes --
so the send time ``a_i`` does not wait for an event loop busy parsing other responses.  The
thread writes to its own duplicate of the connection's descriptor (``os.dup``), under the
client's lock, which the loop also takes to pool, release and close connections: the descriptor
is never written after it was closed, and cannot be a reused one.  Reading stays on the loop.

Limits, by design (loopback benchmarks): ``http://`` only, no redirects, compression or proxies.
A connection the server closed while idle leaves the pool; a request whose connection dies fails
(no retry: a POST is not idempotent).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httptools

from testbed.clock import now_ns
from testbed.errors import TestbedError

LineSink = Callable[[bytes, int], Any]


Result = tuple[int, str, "str | None"]  # (status, error body, Retry-After)
EndSink = Callable[["Result | None", "BaseException | None"], None]


class _Exchange:
    """One request's response: status, ``Retry-After``, SSE lines to ``on_line`` or an error body;
    ``on_end(result, None)`` once it has ended, ``on_end(None, exc)`` if it failed (called once)."""

    __slots__ = ("on_line", "on_end", "status", "retry_after", "buf", "err", "timer", "framed")

    def __init__(self, on_line: LineSink, on_end: EndSink) -> None:
        self.on_line = on_line
        self.on_end: EndSink | None = on_end
        self.status = 0
        self.retry_after: str | None = None
        self.buf = b""
        self.err: list[bytes] = []
        self.timer: asyncio.TimerHandle | None = None
        self.framed = False  # Content-Length or chunked: the end is in the stream, not the close

    def body(self, data: bytes, t: int) -> None:
        if self.status != 200:
            self.err.append(data)
            return
        if self.buf:
            data = self.buf + data
        *lines, self.buf = data.split(b"\n")
        on_line = self.on_line
        for line in lines:
            if line and line != b"\r":  # blank lines only separate SSE events
                on_line(line, t)

    def _end(self, result: Result | None, exc: BaseException | None) -> None:
        end, self.on_end = self.on_end, None
        if self.timer is not None:
            self.timer.cancel()
        if end is not None:
            end(result, exc)

    def done(self, t: int) -> None:
        if self.buf and self.status == 200:
            self.on_line(self.buf, t)
        self._end((self.status, b"".join(self.err).decode(errors="replace"), self.retry_after), None)

    def fail(self, exc: BaseException) -> None:
        self._end(None, exc)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; httptools calls the ``on_*`` methods while parsing."""

    def __init__(self, client: LeanClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.ex: _Exchange | None = None
        self.parser: Any = None
        self.t = 0
        self.closed = False
        self.wfd = -1  # our duplicate of the socket's descriptor, for sends from the timer thread

    # ---------------------------------------------------------------- asyncio side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.wfd = os.dup(sock.fileno())

    def begin(self, ex: _Exchange, raw: bytes) -> None:
        self.ex = ex
        self.parser = httptools.HttpResponseParser(self)
        assert self.transport is not None
        self.transport.write(raw)

    def data_received(self, data: bytes) -> None:
        self.t = now_ns()
        if self.parser is None:  # bytes nobody asked for: the connection is not reusable
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # a malformed response, or the SSE reader's error
            cause = exc.__context__ if exc.__context__ is not None else exc
            self.fail(cause)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client._forget(self)
        self.client._close_wfd(self)
        ex, self.ex = self.ex, None
        if ex is None:
            return
        if exc is None and ex.status and not ex.framed:  # a close-delimited body ends with the close
            ex.done(now_ns())
        else:
            ex.fail(exc or ConnectionError("the server closed the connection before the response ended"))

    # ---------------------------------------------------------------- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.ex is None:
            return
        key = name.lower()
        if key == b"retry-after":
            self.ex.retry_after = value.decode("latin-1")
        elif key == b"content-length" or (key == b"transfer-encoding" and b"chunked" in value.lower()):
            self.ex.framed = True

    def on_headers_complete(self) -> None:
        if self.ex is not None:
            self.ex.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.ex is not None:
            self.ex.body(body, self.t)

    def on_message_complete(self) -> None:
        ex, self.ex = self.ex, None
        keep = bool(self.parser.should_keep_alive())
        self.parser = None
        self.client._release(self, keep)
        if ex is not None:
            ex.done(self.t)

    # ---------------------------------------------------------------- endings
    def fail(self, exc: BaseException) -> None:
        ex, self.ex = self.ex, None
        self.abort()
        if ex is not None:
            ex.fail(exc)

    def timeout(self) -> None:
        self.fail(TimeoutError(f"no complete response within {self.client.timeout_s:g} s"))

    def abort(self) -> None:
        self.closed = True
        self.client._forget(self)
        self.client._close_wfd(self)
        if self.transport is not None:
            self.transport.abort()


class LeanClient:
    """Streaming POSTs to one ``http://host:port`` over a pool of keep-alive connections."""

    def __init__(self, url: str, timeout_s: float = 600.0) -> None:
        self.host, self.port = self.check_url(url)
        self.timeout_s = timeout_s
        self._idle: list[_Conn] = []
        self._open: set[_Conn] = set()
        self._lock = threading.Lock()  # the pool and the write descriptors, shared with the timer thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._head = (f"Host: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                      "Accept: text/event-stream\r\nContent-Length: ").encode()

    @staticmethod
    def check_url(url: str) -> tuple[str, int]:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise TestbedError(f"--http-client lean: {url!r} is not an http:// URL (the lean client speaks plain "
                               "HTTP/1.1, for loopback benchmarks); use --http-client aiohttp for https")
        return parts.hostname, parts.port or 80

    def request_bytes(self, path: str, body: bytes) -> bytes:
        """The whole request (line, headers, JSON body), built once before the send time is taken."""
        return b"POST " + path.encode() + b" HTTP/1.1\r\n" + self._head + str(len(body)).encode() + b"\r\n\r\n" + body

    def start(self, raw: bytes, on_line: LineSink, on_end: EndSink) -> bool:
        """Send ``raw`` now on an idle connection, without a task; False (nothing sent) when none is idle.

        A 200 response's lines go to ``on_line(line, t)`` as they arrive; ``on_end(result, exc)``
        is called once: ``((status, error body, Retry-After), None)`` when the response has ended,
        ``(None, exc)`` on a connection failure or past ``timeout_s``.
        """
        conn = self._pop()
        if conn is None:
            return False
        self._begin(conn, raw, on_line, on_end)
        return True

    def start_from_thread(self, raw: bytes, on_line: LineSink, on_end: EndSink, stamp: Callable[[], None]) -> bool:
        """:meth:`start`, called from another thread (the load generator's timer): ``stamp()`` (the
        send time), then ``raw`` written at once on an idle connection; the loop reads the response
        and arms the deadline.  False, with nothing sent, when no connection is idle."""
        loop = self._loop
        if loop is None:
            return False
        with self._lock:
            conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed or conn.wfd < 0:
                return False
            ex = _Exchange(on_line, on_end)
            conn.ex = ex
            conn.parser = httptools.HttpResponseParser(conn)
            stamp()
            try:
                n = os.write(conn.wfd, raw)
            except BlockingIOError:  # (an idle connection's buffer is empty: not expected)
                n = 0
            except OSError as exc:
                loop.call_soon_threadsafe(conn.fail, exc)
                return True
        loop.call_soon_threadsafe(self._armed, conn, ex, raw[n:])
        return True

    def _armed(self, conn: _Conn, ex: _Exchange, rest: bytes) -> None:
        """On the loop, after a send from the timer thread: the rest of the request, the deadline."""
        if rest and conn.transport is not None and not conn.closed:
            conn.transport.write(rest)
        if ex.on_end is not None:  # not over yet
            ex.timer = asyncio.get_running_loop().call_later(self.timeout_s, conn.timeout)

    async def stream(self, raw: bytes, on_line: LineSink) -> Result:
        """:meth:`start` as a coroutine (opens a connection when none is idle); returns the result or raises."""
        loop = asyncio.get_running_loop()
        conn = self._pop() or await self._connect(loop)
        fut: asyncio.Future[Result] = loop.create_future()

        def end(result: Result | None, exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)  # type: ignore[arg-type]

        self._begin(conn, raw, on_line, end)
        try:
            return await fut
        except asyncio.CancelledError:
            conn.abort()
            raise

    def _begin(self, conn: _Conn, raw: bytes, on_line: LineSink, on_end: EndSink) -> None:
        ex = _Exchange(on_line, on_end)
        ex.timer = asyncio.get_running_loop().call_later(self.timeout_s, conn.timeout)
        conn.begin(ex, raw)

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Conn:
        self._loop = loop
        _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        self._open.add(conn)
        return conn

    def _pop(self) -> _Conn | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _release(self, conn: _Conn, keep_alive: bool) -> None:
        if keep_alive and not conn.closed:
            with self._lock:
                self._idle.append(conn)
        else:
            conn.abort()

    def _forget(self, conn: _Conn) -> None:
        self._open.discard(conn)
        with self._lock:
            if conn in self._idle:
                self._idle.remove(conn)

    def _close_wfd(self, conn: _Conn) -> None:
        with self._lock:  # never while the timer thread writes to it
            if conn.wfd >= 0:
                os.close(conn.wfd)
                conn.wfd = -1

    async def close(self) -> None:
        for conn in list(self._open):
            conn.abort()
        with self._lock:
            self._idle.clear()
