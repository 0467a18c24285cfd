"""Where the load generator sends requests: an OpenAI-compatible HTTP server, or an engine in-process.

Both targets fill a :class:`RequestRecord` the same way, on the client's event loop:
``send_ns`` (a_i) right before the request is issued, ``chunk_ns`` at the receipt of each
token chunk, ``n_out`` from token ids (the server's ``usage.completion_tokens``; the in-process
target's engine token ids).  A request that is refused or fails is recorded failed with a
label shared by both targets (:func:`error_label`), so rejections are counted, never timed.

* :class:`HttpTarget`: ``POST /v1/completions`` (text) or ``/v1/chat/completions`` (messages)
  with ``stream: true``; one persistent connection pool (aiohttp, or httpx); parses SSE lines.
  A chunk counts ``len(token_ids)`` tokens when the server sends them (testbed does), else 1
  per non-empty text piece (vLLM, TGI: ``n_out`` still comes from ``usage``);
* :class:`InprocTarget`: the same dynamic batcher the server runs
  (:class:`testbed.serve.batcher.Batcher`), without HTTP: served minus in-process is the cost
  of the transport and the web stack.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any

from testbed.clock import now_ns
from testbed.datasets import Example
from testbed.engines.base import Engine, GenerationRequest
from testbed.errors import TestbedError
from testbed.metrics.records import RequestRecord

REASONS = {400: "bad request", 404: "not found", 413: "too large", 429: "rejected: queue full",
           500: "server error", 503: "rejected: unavailable", 504: "deadline exceeded"}
REJECTED = (429, 503)


def error_label(status: int) -> str:
    """The error string of a request that got HTTP ``status`` (same for both targets)."""
    return f"status {status} ({REASONS.get(status, 'error')})"


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
                 return_timing: bool = False, client: str = "aiohttp", timeout_s: float = 600.0) -> None:
        if api not in ("auto", "completions", "chat"):
            raise TestbedError(f"--api {api!r}: give auto, completions or chat")
        if client not in ("aiohttp", "httpx"):
            raise TestbedError(f"--http-client {client!r}: give aiohttp or httpx")
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]
        self.model, self.api, self.max_tokens = model, api, max_tokens
        self.return_timing, self.client, self.timeout_s = return_timing, client, timeout_s
        self.label = f"http {self.url} ({client})"
        self._session: Any = None

    async def start(self) -> None:
        if self.client == "aiohttp":
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
            await (self._session.close() if self.client == "aiohttp" else self._session.aclose())
            self._session = None

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
        if self.return_timing:
            body["return_timing"] = True
        path = "/v1/chat/completions" if chat else "/v1/completions"
        return path, json.dumps(body, ensure_ascii=False).encode(), chat

    async def send(self, ex: Example, rec: RequestRecord) -> None:
        path, data, chat = self.body(ex)
        url = self.url + path
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        try:
            if self.client == "aiohttp":
                rec.send_ns = now_ns()
                async with self._session.post(url, data=data, headers=headers) as resp:
                    if resp.status != 200:
                        self._failed(rec, resp.status, await resp.text(), resp.headers.get("Retry-After"))
                        return
                    await self._consume(resp.content, rec, chat)
            else:
                rec.send_ns = now_ns()
                async with self._session.stream("POST", url, content=data, headers=headers) as resp:
                    if resp.status_code != 200:
                        self._failed(rec, resp.status_code, (await resp.aread()).decode(errors="replace"),
                                     resp.headers.get("Retry-After"))
                        return
                    await self._consume(self._lines(resp), rec, chat)
        except Exception as exc:
            rec.fail(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, now_ns())

    @staticmethod
    async def _lines(resp: Any) -> AsyncIterator[bytes]:
        async for line in resp.aiter_lines():
            yield line.encode()

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

    @staticmethod
    async def _consume(lines: Any, rec: RequestRecord, chat: bool) -> None:
        pieces: list[str] = []
        usage: dict[str, Any] | None = None
        async for line in lines:
            t = now_ns()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            obj = json.loads(payload)
            if "error" in obj:
                err = obj["error"] if isinstance(obj["error"], dict) else {"message": str(obj["error"])}
                code = err.get("code")
                rec.fail(error_label(code) if isinstance(code, int) else "error event in stream", t)
                rec.extra["error_message"] = err.get("message")
                return
            choices = obj.get("choices")
            if choices:
                c = choices[0]
                piece = (c.get("delta") or {}).get("content") if chat else c.get("text")
                ids = c.get("token_ids")
                count = len(ids) if ids else (1 if piece else 0)
                if count:
                    rec.chunk_ns.append(t)
                    rec.chunk_tokens.append(count)
                    pieces.append(piece or "")
                if c.get("finish_reason"):
                    rec.finish_reason = c["finish_reason"]
            if obj.get("usage"):
                usage = obj["usage"]
            if obj.get("timing"):
                rec.extra["server_timing"] = obj["timing"]
        rec.done_ns = now_ns()
        rec.output = "".join(pieces)
        if usage and isinstance(usage.get("completion_tokens"), int):
            rec.n_out = usage["completion_tokens"]
            rec.n_in = int(usage.get("prompt_tokens") or 0)
        else:  # a server that sends no usage: chunks counted, and the record says so
            rec.n_out = sum(rec.chunk_tokens)
            rec.extra["n_out_source"] = "chunks (no usage from the server)"
        if not rec.chunk_ns:
            from testbed.metrics.summary import NO_TOKENS_ERROR

            rec.fail(NO_TOKENS_ERROR, rec.done_ns)


# ---------------------------------------------------------------------- in-process
class InprocTarget(Target):
    """The engine behind the same :class:`~testbed.serve.batcher.Batcher` the server uses, no HTTP."""

    def __init__(self, engine: Engine, batch: Any = None, max_tokens: int | None = None) -> None:
        from testbed.serve.batcher import BatchConfig, Batcher

        self.engine = engine.load()
        self.batcher = Batcher(engine, batch or BatchConfig())
        self.max_tokens = max_tokens
        self.label = f"inproc {engine.config.label()} {self.batcher.config.label()}"
        self._mailbox: Any = None

    async def close(self) -> None:
        self.batcher.stop()

    def describe(self) -> dict[str, Any]:
        return {"target": self.label}

    async def send(self, ex: Example, rec: RequestRecord) -> None:
        from testbed.serve.batcher import Busy, LoopMailbox

        if self._mailbox is None:
            self._mailbox = LoopMailbox(asyncio.get_running_loop())
        q: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        req = GenerationRequest(text=ex.text, messages=ex.messages, max_new_tokens=self.max_tokens, request_id=ex.id)
        rec.send_ns = now_ns()
        try:
            job = self.batcher.submit(req, self._mailbox.sink(q.put_nowait), rec.send_ns)
        except Busy as b:
            rec.fail(error_label(b.status), now_ns())
            rec.extra["error_message"] = str(b)
            return
        pieces: list[str] = []
        try:
            while True:
                msg = await q.get()
                kind = msg[0]
                if kind == "token":
                    rec.chunk_ns.append(now_ns())
                    rec.chunk_tokens.append(1)
                    pieces.append(msg[2])
                elif kind == "admitted":
                    rec.n_in = msg[1]
                    if msg[2]:
                        rec.extra["warnings"] = list(msg[2])
                elif kind == "error":
                    rec.fail(error_label(msg[1]), now_ns())
                    rec.extra["error_message"] = msg[2]
                    return
                else:
                    _, reason, timing, token_ids = msg
                    rec.done_ns = now_ns()
                    rec.n_out = len(token_ids)
                    rec.finish_reason = reason
                    rec.decode_start_ns = timing.get("decode_start_ns")
                    rec.encoder_done_ns = timing.get("encoder_done_ns")
                    rec.output = "".join(pieces)
                    if not rec.chunk_ns:
                        from testbed.metrics.summary import NO_TOKENS_ERROR

                        rec.fail(NO_TOKENS_ERROR, rec.done_ns)
                    return
        except asyncio.CancelledError:
            job.cancel()
            raise
