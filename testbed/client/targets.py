"""Where the load generator sends requests: an OpenAI-compatible HTTP server, or an engine in-process.

Both targets fill a :class:`RequestRecord` the same way, on the client's event loop:
``send_ns`` (a_i) right before the request is issued, ``chunk_ns`` at the receipt of each
token chunk, ``n_out`` from token ids (the server's ``usage.completion_tokens``; the in-process
target's engine token ids).  A request that is refused or fails is recorded failed with a
label shared by both targets (:func:`error_label`), so rejections are counted, never timed.

* :class:`HttpTarget`: ``POST /v1/completions`` (text) or ``/v1/chat/completions`` (messages)
  with ``stream: true``; one persistent connection pool: the lean client
  (:mod:`testbed.client.lean`, the default), aiohttp or httpx (kept for comparison); every one
  feeds the same SSE reader (:class:`testbed.client.sse.SseReader`: token counts, the last
  visible token, tokens the server counted but never streamed in a timed chunk);
* :class:`InprocTarget`: the same dynamic batcher the server runs
  (:class:`testbed.serve.batcher.Batcher`), without HTTP: served minus in-process is the cost
  of the transport and the web stack.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from testbed.client.sse import SseReader, error_label
from testbed.clock import now_ns
from testbed.datasets import Example
from testbed.engines.base import Engine, GenerationRequest
from testbed.errors import TestbedError
from testbed.metrics.records import RequestRecord
from testbed.metrics.summary import NO_TOKENS_ERROR

REJECTED = (429, 503)
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
HTTP_CLIENTS = ("lean", "aiohttp", "httpx")


def is_rejection(error: str | None) -> bool:
    return bool(error) and any(error.startswith(f"status {s} ") for s in REJECTED)  # type: ignore[union-attr]


class Target(ABC):
    label: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook
        return None

    @abstractmethod
    async def send(self, ex: Example, rec: RequestRecord) -> None:
        """Issue ``ex`` now; set ``rec.send_ns`` just before, then fill chunks, counts and errors."""

    def describe(self) -> dict[str, Any]:
        return {"target": self.label}


# ---------------------------------------------------------------------- HTTP
class HttpTarget(Target):
    def __init__(self, url: str, model: str, api: str = "auto", max_tokens: int | None = None,
                 return_timing: bool = False, client: str = "lean", timeout_s: float = 600.0,
                 ignore_eos: bool = False, thread_send: bool = True) -> None:
        if api not in ("auto", "completions", "chat"):
            raise TestbedError(f"--api {api!r}: give auto, completions or chat")
        if client not in HTTP_CLIENTS:
            raise TestbedError(f"--http-client {client!r}: give {', '.join(HTTP_CLIENTS)}")
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]
        self.model, self.api, self.max_tokens = model, api, max_tokens
        self.return_timing, self.client, self.timeout_s = return_timing, client, timeout_s
        self.ignore_eos = ignore_eos
        self.thread_send = thread_send  # lean: the timer thread may write requests itself
        self.label = f"http {self.url} ({client})"
        self._session: Any = None
        self._built: dict[int, tuple[Example, tuple[str, bytes, bool]]] = {}
        if client == "lean":
            from testbed.client.lean import LeanClient

            LeanClient.check_url(self.url)

    def __getstate__(self) -> dict[str, Any]:  # sent to client processes before start()
        return {**self.__dict__, "_session": None, "_built": {}}

    async def start(self) -> None:
        if self.client == "lean":
            from testbed.client.lean import LeanClient

            self._session = LeanClient(self.url, self.timeout_s)
        elif self.client == "aiohttp":
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), skip_auto_headers=("User-Agent",))
        else:
            import httpx

            self._session = httpx.AsyncClient(timeout=self.timeout_s,
                                              limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))

    async def close(self) -> None:
        if self._session is not None:
            await (self._session.aclose() if self.client == "httpx" else self._session.close())
            self._session = None
        self._built = {}

    def prebuild(self, examples: Sequence[Example]) -> None:
        """Encode every example's request once, after :meth:`start` and before the run, so JSON
        encoding is not part of the dispatch path (``a_i - s_i``)."""
        self._built = {id(ex): (ex, self._request(ex)) for ex in examples}

    def _request(self, ex: Example) -> tuple[str, bytes, bool]:
        """(path, what to send, chat?): the JSON body, or for the lean client the whole request."""
        hit = self._built.get(id(ex))
        if hit is not None and hit[0] is ex:
            return hit[1]
        path, data, chat = self.body(ex)
        if self.client == "lean":
            data = self._session.request_bytes(path, data)
        return path, data, chat

    def body(self, ex: Example) -> tuple[str, bytes, bool]:
        """(path, JSON body, chat?) of one example; built before the send time is taken."""
        chat = self.api == "chat" or (self.api == "auto" and ex.messages is not None)
        body: dict[str, Any] = {"model": self.model, "stream": True, "stream_options": {"include_usage": True},
                                "temperature": 0}
        if chat:
            body["messages"] = list(ex.messages) if ex.messages else [{"role": "user", "content": ex.text or ""}]
        else:
            if ex.text is None:
                raise TestbedError(f"example {ex.id} has chat messages: use --api chat (or auto)")
            body["prompt"] = ex.text
        if self.max_tokens:
            body["max_tokens"] = self.max_tokens
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.return_timing:
            body["return_timing"] = True
        path = "/v1/chat/completions" if chat else "/v1/completions"
        return path, json.dumps(body, ensure_ascii=False).encode(), chat

    async def send(self, ex: Example, rec: RequestRecord) -> None:
        path, data, chat = self._request(ex)
        reader = SseReader(rec, chat)
        try:
            if self.client == "lean":
                rec.send_ns = now_ns()
                self._ended(rec, reader, await self._session.stream(data, reader.line), None)
                return
            if self.client == "aiohttp":
                rec.send_ns = now_ns()
                async with self._session.post(self.url + path, data=data, headers=HEADERS) as resp:
                    if resp.status != 200:
                        self._failed(rec, resp.status, await resp.text(), resp.headers.get("Retry-After"))
                        return
                    async for line in resp.content:
                        if reader.line(line, now_ns()):
                            break
            else:
                rec.send_ns = now_ns()
                async with self._session.stream("POST", self.url + path, content=data, headers=HEADERS) as resp:
                    if resp.status_code != 200:
                        self._failed(rec, resp.status_code, (await resp.aread()).decode(errors="replace"),
                                     resp.headers.get("Retry-After"))
                        return
                    async for text_line in resp.aiter_lines():
                        if reader.line(text_line.encode(), now_ns()):
                            break
            reader.finish(now_ns())
        except Exception as exc:
            rec.fail(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, now_ns())

    def send_nowait(self, ex: Example, rec: RequestRecord, done: Callable[[], None]) -> bool:
        """Issue ``ex`` now without a task (the lean client on an idle connection): ``done()`` is called
        once ``rec`` is complete.  False, with nothing sent, when it cannot (then use :meth:`send`)."""
        if self.client != "lean" or self._session is None:
            return False
        path, raw, chat = self._request(ex)
        reader = SseReader(rec, chat)

        def end(result: Any, exc: BaseException | None) -> None:
            self._ended(rec, reader, result, exc)
            done()

        rec.send_ns = now_ns()
        return bool(self._session.start(raw, reader.line, end))

    def send_from_thread(self, ex: Example, rec: RequestRecord, done: Callable[[], None]) -> bool:
        """:meth:`send_nowait` from the load generator's timer thread: a prebuilt request written at once
        on an idle connection, the loop reading the response (``done()`` runs on the loop).  False,
        with nothing sent, when it cannot: another client, no idle connection, a request not prebuilt."""
        if self.client != "lean" or self._session is None or not self.thread_send:
            return False
        hit = self._built.get(id(ex))
        if hit is None or hit[0] is not ex:  # no JSON encoding on the timer thread
            return False
        _, raw, chat = hit[1]
        reader = SseReader(rec, chat)

        def end(result: Any, exc: BaseException | None) -> None:
            self._ended(rec, reader, result, exc)
            done()

        def stamp() -> None:
            rec.send_ns = now_ns()

        return bool(self._session.start_from_thread(raw, reader.line, end, stamp))

    def _ended(self, rec: RequestRecord, reader: SseReader, result: Any, exc: BaseException | None) -> None:
        """The lean client's response has ended (``result``) or failed (``exc``): complete ``rec``."""
        if exc is not None:
            rec.fail(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, now_ns())
            return
        status, text, retry_after = result
        if status != 200:
            self._failed(rec, status, text, retry_after)
            return
        reader.finish(now_ns())

    @staticmethod
    def _failed(rec: RequestRecord, status: int, text: str, retry_after: str | None) -> None:
        rec.fail(error_label(status), now_ns())
        try:
            msg = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = text[:300]
        rec.extra["error_message"] = msg
        if retry_after is not None:
            rec.extra["retry_after"] = retry_after


# ---------------------------------------------------------------------- in-process
class InprocTarget(Target):
    """The engine behind the same :class:`~testbed.serve.batcher.Batcher` the server uses, no HTTP."""

    def __init__(self, engine: Engine, batch: Any = None, max_tokens: int | None = None,
                 ignore_eos: bool = False, return_timing: bool = False) -> None:
        from testbed.serve.batcher import BatchConfig, Batcher

        self.return_timing = return_timing  # keep the scheduler's timing in extra["server_timing"]
        self.engine = engine.load()
        self.batcher = Batcher(engine, batch or BatchConfig())
        self.max_tokens = max_tokens
        self.ignore_eos = ignore_eos
        self.label = f"inproc {engine.config.label()} {self.batcher.config.label()}"
        self._mailbox: Any = None

    async def close(self) -> None:
        self.batcher.stop()

    def describe(self) -> dict[str, Any]:
        return {"target": self.label}

    def stats(self) -> dict[str, Any]:
        """The scheduler's counters: batching mode, batches, joins, padded fraction."""
        return self.batcher.stats()

    async def send(self, ex: Example, rec: RequestRecord) -> None:
        from testbed.serve.batcher import Busy, LoopMailbox

        if self._mailbox is None:
            self._mailbox = LoopMailbox(asyncio.get_running_loop())
        from testbed.serve.messages import Admitted, Done, Failed, JobReader, Token

        reader = JobReader()
        req = GenerationRequest(text=ex.text, messages=ex.messages, max_new_tokens=self.max_tokens, request_id=ex.id,
                                ignore_eos=self.ignore_eos)
        rec.send_ns = now_ns()
        try:
            job = self.batcher.submit(req, self._mailbox.sink(reader.put), rec.send_ns)
        except Busy as b:
            rec.fail(error_label(b.status), now_ns())
            rec.extra["error_message"] = str(b)
            return
        pieces: list[str] = []
        admitted_ns: int | None = None
        try:
            while True:
                msg = await reader.get()
                if isinstance(msg, Token):
                    t = now_ns()
                    rec.chunk_ns.append(t)
                    rec.chunk_tokens.append(1)
                    pieces.append(msg.text)
                    if msg.text:
                        rec.last_visible_ns = t
                elif isinstance(msg, Admitted):
                    rec.n_in = msg.n_in
                    admitted_ns = msg.t_ns
                    if msg.warnings:
                        rec.extra["warnings"] = list(msg.warnings)
                elif isinstance(msg, Failed):
                    rec.fail(error_label(msg.status), now_ns())
                    rec.extra["error_message"] = msg.message
                    return
                elif isinstance(msg, Done):
                    rec.done_ns = now_ns()
                    rec.n_out = len(msg.token_ids)
                    rec.finish_reason = msg.finish_reason
                    rec.decode_start_ns = msg.timing.get("decode_start_ns")
                    rec.encoder_done_ns = msg.timing.get("encoder_done_ns")
                    rec.extra["join_step"] = msg.timing.get("join_step")
                    rec.extra["batch_size"] = msg.timing.get("batch_size")
                    if self.return_timing:
                        rec.extra["server_timing"] = {**msg.timing, "admitted_ns": admitted_ns}
                    rec.output = "".join(pieces)
                    if not rec.chunk_ns:
                        rec.fail(NO_TOKENS_ERROR, rec.done_ns)
                    return
        except asyncio.CancelledError:
            job.cancel()
            raise
