"""The demo's thin path: answers stream to the page outside Gradio's queue.

Gradio keeps the controls (pickers, the load step, the history); the timed request itself is a
plain ``fetch`` from the page to a route on the same server (``GET /tb/stream?ticket=ID``), whose
body is a stream of ``data: {...}`` events, one per burst of tokens.  A **ticket** is made by the
(untimed) load step: it holds the validated request and where it goes, either

* **in-process**: a loaded engine of the :class:`~testbed.ui.service.EngineCache`, run through
  :func:`~testbed.ui.service.stream_answer`; or
* **served**: a running ``testbed serve`` or any OpenAI-compatible server (``url``), called with
  ``stream: true`` and ``return_timing: true``; the server's timing, when it offers it, fills the
  engine-side phases of the waterfall.

Every time taken here is :func:`testbed.clock.now_ns` (the UI server's side): the request's
arrival at the route, the proxy's send and last receipt (served), and the hand-off of the last
token to the response.  ``GET /tb/clock`` returns the same clock, so the page can map its
``performance.now()`` onto it (Cristian's method, the ping with the smallest round trip).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from testbed.clock import now_ns
from testbed.engines.base import GenerationRequest
from testbed.metrics.records import RequestRecord
from testbed.ui import service as svc

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Ticket:
    """One timed answer: what to run, and the UI server's timestamps once it ran."""

    task: str
    slot: str
    label: str
    request: GenerationRequest
    loaded: svc.Loaded | None = None
    url: str | None = None
    model: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    # filled while serving (UI server clock, ns)
    arrival_ns: int | None = None
    proxy_send_ns: int | None = None
    proxy_last_recv_ns: int | None = None
    last_write_ns: int | None = None
    record: RequestRecord | None = None  # in-process: the engine's record
    server_timing: dict[str, Any] | None = None  # served: the server's return_timing
    text: str = ""
    n_tokens: int = 0
    error: str | None = None
    warnings: tuple[str, ...] = ()
    done: bool = False
    recorded: bool = False  # its history row and waterfall were made

    @property
    def served(self) -> bool:
        return self.url is not None


class Tickets:
    """Tickets by id (the newest 500 kept)."""

    def __init__(self, keep: int = 500) -> None:
        self._d: OrderedDict[str, Ticket] = OrderedDict()
        self._lock = threading.Lock()
        self.keep = keep

    def add(self, t: Ticket) -> Ticket:
        with self._lock:
            self._d[t.id] = t
            while len(self._d) > self.keep:
                self._d.popitem(last=False)
        return t

    def get(self, tid: str) -> Ticket | None:
        with self._lock:
            return self._d.get(tid)


def event(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


# ------------------------------------------------------------------ in-process
def inproc_events(t: Ticket) -> Iterator[str]:
    """The answer of a loaded engine as events (a blocking generator: Starlette runs it in a thread)."""
    assert t.loaded is not None
    sent = ""
    last: svc.Snapshot | None = None
    for snap in svc.stream_answer(t.loaded, t.request):
        last = snap
        if snap.n_tokens > t.n_tokens and snap.text.startswith(sent):
            piece, sent = snap.text[len(sent):], snap.text
            t.n_tokens = snap.n_tokens
            t.last_write_ns = now_ns()
            yield event({"p": piece, "n": t.n_tokens})
    if last is not None:
        t.record, t.text, t.error, t.warnings = last.record, last.text, last.error, last.warnings
        if last.record is not None and last.record.n_out > t.n_tokens:  # tokens only in the final snapshot
            t.n_tokens = last.record.n_out
            piece = last.text[len(sent):] if last.text.startswith(sent) else ""
            t.last_write_ns = now_ns()
            yield event({"p": piece, "n": t.n_tokens})
    t.done = True
    yield event({"done": 1, "n": t.n_tokens, "text": t.text, "error": t.error})


# ------------------------------------------------------------------ served
def served_body(t: Ticket) -> tuple[str, dict[str, Any]]:
    """The OpenAI-compatible path and body of a ticket's request (streamed, with timing)."""
    max_tokens = svc.TASK_MAX_NEW[t.task]
    body: dict[str, Any] = {"stream": True, "return_timing": True, "max_tokens": max_tokens}
    if t.model:
        body["model"] = t.model
    if t.request.messages:
        body["messages"] = [dict(m) for m in t.request.messages]
        return "/v1/chat/completions", body
    body["prompt"] = t.request.text
    return "/v1/completions", body


async def served_events(t: Ticket) -> AsyncIterator[str]:
    """Proxy one streamed request to ``t.url``; events as tokens arrive; errors end the stream."""
    import httpx

    assert t.url is not None
    path, body = served_body(t)
    chat = path.endswith("chat/completions")
    pieces: list[str] = []
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0)) as client:
            t.proxy_send_ns = now_ns()
            async with client.stream("POST", t.url.rstrip("/") + path, json=body) as r:
                if r.status_code != 200:
                    raw = (await r.aread()).decode("utf-8", "replace")
                    t.error = f"{t.url} answered HTTP {r.status_code}: {_error_message(raw)}"
                else:
                    async for line in r.aiter_lines():
                        ev = _served_line(t, line, chat, pieces)
                        if ev is not None:
                            t.last_write_ns = now_ns()
                            yield ev
    except httpx.HTTPError as exc:
        t.error = f"could not reach {t.url}: {type(exc).__name__}: {exc}"
    t.text = "".join(pieces)
    if t.error is None and t.n_tokens == 0:
        t.error = "the server sent no tokens"
    t.done = True
    yield event({"done": 1, "n": t.n_tokens, "text": t.text, "error": t.error})


def _served_line(t: Ticket, line: str, chat: bool, pieces: list[str]) -> str | None:
    if not line.startswith("data: ") or line == "data: [DONE]":
        return None
    try:
        obj = json.loads(line[6:])
    except ValueError:
        return None
    if "error" in obj:
        err = obj["error"]
        t.error = f"{t.url}: {err.get('message') if isinstance(err, dict) else err}"
        return None
    if isinstance(obj.get("timing"), dict):
        t.server_timing = obj["timing"]
    if obj.get("warnings"):
        t.warnings = tuple(obj["warnings"])
    choices = obj.get("choices") or []
    if not choices:
        return None
    c = choices[0]
    piece = ((c.get("delta") or {}).get("content") if chat else c.get("text")) or ""
    ids = c.get("token_ids")
    count = len(ids) if isinstance(ids, list) else (1 if piece else 0)
    if not count:
        return None
    t.proxy_last_recv_ns = now_ns()
    t.n_tokens += count
    pieces.append(piece)
    return event({"p": piece, "n": t.n_tokens})


def _error_message(raw: str) -> str:
    try:
        err = json.loads(raw).get("error")
        return str(err.get("message") if isinstance(err, dict) else err)
    except (ValueError, AttributeError):
        return raw[:300]


def is_loopback(url: str) -> bool:
    """Same machine: its ``perf_counter_ns`` (CLOCK_MONOTONIC) is the UI server's clock too."""
    return (urlparse(url).hostname or "") in LOOPBACK


def check_url(url: str) -> str:
    """The served model's id (``GET /v1/models``), or a clear error naming the URL."""
    import httpx

    u = url.strip()
    if not u.startswith(("http://", "https://")):
        raise ValueError(f"server URL {url!r} is not accepted: give http://HOST:PORT of an OpenAI-compatible "
                         "server (for instance http://127.0.0.1:8000 from `testbed serve`)")
    try:
        r = httpx.get(u.rstrip("/") + "/v1/models", timeout=10.0)
        r.raise_for_status()
        return str(r.json()["data"][0]["id"])
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"server URL {u!r}: GET /v1/models failed ({type(exc).__name__}: {exc}); "
                         "is the server running?") from None


def served_record(t: Ticket) -> RequestRecord | None:
    """A server-side record from the server's timing (arrival -> tokens), for engine TTFT / TPOT."""
    tm = t.server_timing
    if not tm or not tm.get("token_ns") or tm.get("arrival_ns") is None:
        return None
    toks = [int(x) for x in tm["token_ns"]]
    return RequestRecord(t.id, int(tm["arrival_ns"]), int(tm["arrival_ns"]), chunk_ns=toks,
                         chunk_tokens=[1] * len(toks), n_out=len(toks), decode_start_ns=tm.get("decode_start_ns"),
                         encoder_done_ns=tm.get("encoder_done_ns"), output=t.text)


# ------------------------------------------------------------------ routes
def mount(app: Any, tickets: Tickets) -> None:
    """Add ``GET /tb/clock`` and ``GET /tb/stream`` in front of Gradio's own routes."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def clock(request: Request) -> Response:
        return JSONResponse({"t_ns": now_ns()})

    async def stream(request: Request) -> Response:
        arrival = now_ns()
        tid = request.query_params.get("ticket", "")
        t = tickets.get(tid)
        if t is None or t.arrival_ns is not None:
            why = "unknown" if t is None else "already used"
            return JSONResponse({"error": f"ticket {tid!r} is {why}; click the button again"}, status_code=404)
        t.arrival_ns = arrival
        body: Any = served_events(t) if t.served else inproc_events(t)
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    for r in (Route("/tb/clock", clock, methods=["GET"]), Route("/tb/stream", stream, methods=["GET"])):
        app.router.routes.insert(0, r)
