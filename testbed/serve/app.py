"""The HTTP server: an OpenAI-compatible ASGI app (Starlette) around one :class:`Batcher`.

Endpoints:

* ``POST /v1/completions`` (``prompt``) and ``POST /v1/chat/completions`` (``messages``), with
  ``stream: true`` (server-sent events, **one event per generated token**, the token's id in
  ``choices[0].token_ids``, EOS included as an event of its own with empty text; then a chunk
  with the ``finish_reason``, a chunk with ``usage`` counted from token ids, and ``data: [DONE]``;
  ``stream_options.continuous_usage_stats`` adds the usage so far to every chunk) or without
  (one JSON answer with ``usage``); ``min_tokens`` / ``ignore_eos`` are honoured (or refused
  with a 400 on an engine that cannot mask EOS, :mod:`testbed.serve.protocol`);
  ``"return_timing": true`` (an extension) adds the engine-side timestamps of the request
  (``timing``: arrival, admission (tokenised), batch start, encoder end, every token, end, and
  when streamed the hand-off of the last token to the HTTP write; ``perf_counter_ns``);
* ``GET /health`` (model, queue depth, running rows), ``GET /v1/models``, ``GET /metrics``
  (Prometheus text: requests, rejections, cancellations, queue depth, TTFT / E2E histograms).

Errors are JSON (``{"error": {"message", "type", "param", "code"}}``) naming what was wrong
and what is accepted: 400 (malformed JSON, nesting deeper than ``--max-json-depth``, wrong
types, unknown fields, lone surrogates, empty or over-long prompt, bad ``max_tokens``), 404
(unknown model), 429 + ``Retry-After`` (admission queue full, decided at once), 503 (shutting
down), 504 (per-request deadline); 500s say ``internal error (id ...)``, the details are in the
log under that id.  ``stop`` strings end a generation (:mod:`testbed.serve.stops`).  Size,
time, connection, ``Host`` / ``Content-Type`` / ``Origin`` limits are enforced before a handler
runs (:mod:`testbed.serve.guard`, :mod:`testbed.serve.connection`).  A client that disconnects
cancels its generation.  The loop never runs the model: the batcher's worker thread does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from testbed.clock import now_ns
from testbed.engines.base import Engine
from testbed.serve.batcher import BatchConfig, Batcher, Busy, Job, LoopMailbox
from testbed.serve.guard import Guard, internal_error
from testbed.serve.limits import BodyError, Limits, parse_json
from testbed.serve.messages import Admitted, Done, Failed, JobReader, Token
from testbed.serve.metrics import ServerMetrics
from testbed.serve.protocol import ApiError, ParsedRequest, parse_body
from testbed.serve.stops import StopFilter

FINISH = {"eos": "stop", "length": "length", "cancelled": "abort", "error": "error"}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _chunk_end(n_in: int, n_out: int, usage: bool) -> str:
    """The end of a streamed chunk: ``}]}``, or with ``stream_options.continuous_usage_stats`` the
    usage so far (``n_out`` tokens sent, as vLLM reports it)."""
    if not usage:
        return "}]}\n\n"
    return (f'}}],"usage":{{"prompt_tokens":{n_in},"completion_tokens":{n_out},'
            f'"total_tokens":{n_in + n_out}}}}}\n\n')


class Server:
    """One engine behind the OpenAI-compatible endpoints; :attr:`app` is the ASGI app."""

    def __init__(self, engine: Engine, batch: BatchConfig | None = None, model_name: str | None = None,
                 limits: Limits | None = None, bind_host: str = "127.0.0.1") -> None:
        self.engine = engine.load()
        self.limits = limits or Limits()
        self.batcher = Batcher(engine, batch)
        self.model_name = model_name or engine.config.model
        self.max_tokens_limit = engine.config.max_new_tokens
        self.metrics = ServerMetrics()
        self.started = time.time()
        self.replica: str | None = None  # set by a replica of a Ray Serve deployment (testbed.scale.ray_serve)
        self._mailbox: LoopMailbox | None = None
        self.routes = Starlette(routes=[
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
        ], lifespan=self._lifespan, exception_handlers={Exception: internal_error})
        self.app = Guard(self.routes, self.limits, self.metrics, bind_host)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        self.close()

    def close(self) -> None:
        self.batcher.stop()

    # ------------------------------------------------------------------ small endpoints
    async def health(self, request: Request) -> Response:
        body = {"status": "ok", "model": self.model_name, "engine": self.engine.config.label(),
                "batching": self.batcher.config.label(), "queue_depth": self.batcher.queue_depth,
                "running": self.batcher.running}
        if self.replica is not None:
            body["replica"] = self.replica
        return JSONResponse(body)

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": int(self.started), "owned_by": "testbed",
             "task": self.engine.model_info.task, "max_tokens_limit": self.max_tokens_limit}]})

    async def prometheus(self, request: Request) -> Response:
        b = self.batcher
        s = b.scheduler
        pad = b.padding
        text = self.metrics.render(
            gauges={"testbed_queue_depth": (b.queue_depth, "Requests admitted and waiting for a batch."),
                    "testbed_running_requests": (b.running, "Requests being decoded now."),
                    "testbed_max_queue": (b.config.max_queue, "Admission bound: waiting requests past it get 429."),
                    "testbed_max_batch_size": (b.config.max_batch_size, "Rows per batch at most."),
                    "testbed_continuous_batching": (int(b.config.batching == "continuous"),
                                                    "1: rows join and leave between steps; 0: static batches."),
                    "testbed_padded_fraction": (pad.fraction or 0.0,
                                                "Fraction of key/value positions spent on padding.")},
            extra_counters={"testbed_batches_total": (lambda: s.batches, "Batches started on an idle engine."),
                            "testbed_batch_rows_total": (lambda: s.batch_rows, "Requests decoded in batches."),
                            "testbed_batch_joins_total": (lambda: s.joins, "Requests that joined a running batch."),
                            "testbed_decode_iterations_total": (lambda: s.steps, "Scheduler iterations (steps)."),
                            "testbed_padded_positions_total": (lambda: pad.padded, "Padded key/value positions."),
                            "testbed_positions_total": (lambda: pad.total, "Key/value positions computed or attended."),
                            "testbed_deadline_exceeded_total": (lambda: s.expired, "Requests past their deadline.")},
        )
        if self.replica is not None:  # one replica's numbers: say which
            text = f"# testbed replica {self.replica}\n" + text
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    # ------------------------------------------------------------------ generation
    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    def _error(self, endpoint: str, e: ApiError) -> Response:
        self.metrics.requests[(endpoint, e.status)] += 1
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    async def _generate(self, request: Request, chat: bool) -> Response:
        arrival = now_ns()
        endpoint = "chat" if chat else "completions"
        reader = JobReader()
        try:
            raw = await request.body()  # at most --max-body-bytes: the guard read it
            try:
                body = parse_json(raw, self.limits.max_json_depth)
            except BodyError as exc:
                raise ApiError(400, str(exc)) from None
            parsed = parse_body(body, chat=chat, served_model=self.model_name, max_tokens_limit=self.max_tokens_limit)
            if chat and not self.engine.is_chat:
                raise ApiError(400, f"{self.model_name!r} is a translation model: POST /v1/completions with a "
                                    "'prompt' (the source sentence) instead of /v1/chat/completions", param="messages")
            self._check_length_control(parsed)
            if self._mailbox is None:
                self._mailbox = LoopMailbox(asyncio.get_running_loop())
            put: Any = reader.put
            if parsed.stop:
                put = StopFilter(parsed.stop, reader.put, arrival)
            try:
                job = self.batcher.submit(parsed.request, self._mailbox.sink(put), arrival)
            except Busy as b:
                self.metrics.rejected["queue_full" if b.status == 429 else "shutting_down"] += 1
                raise ApiError(b.status, str(b), kind="rate_limit_error" if b.status == 429 else "unavailable",
                               headers={"Retry-After": str(b.retry_after_s)}) from None
            if isinstance(put, StopFilter):
                put.job = job  # cancelled when a stop string ends the answer
            try:
                first = await reader.get()
            except asyncio.CancelledError:
                job.cancel()
                raise
            if isinstance(first, Failed):
                if first.status == 429:  # refused by the queued-token bound after tokenisation
                    self.metrics.rejected["queued_tokens"] += 1
                    raise ApiError(429, first.message, kind="rate_limit_error",
                                   headers={"Retry-After": str(self.batcher.config.retry_after_s)})
                raise ApiError(first.status, first.message,
                               kind="server_error" if first.status >= 500 else "invalid_request_error")
            assert isinstance(first, Admitted)
        except ApiError as e:
            return self._error(endpoint, e)
        n_in, warnings = first.n_in, list(first.warnings) + list(parsed.warnings)
        admitted_ns = first.t_ns
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:16]}"
        if parsed.stream:
            return StreamingResponse(self._sse(job, reader, parsed, rid, n_in, warnings, endpoint, admitted_ns),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await self._collect(request, job, reader, parsed, rid, n_in, warnings, endpoint, admitted_ns)

    def _check_length_control(self, p: ParsedRequest) -> None:
        """min_tokens / ignore_eos on an engine that cannot mask EOS: a 400 naming the field, never ignored."""
        req = p.request
        if (req.ignore_eos or req.min_new_tokens) and not self.engine.capabilities.eos_control:
            name, value = ("ignore_eos", True) if req.ignore_eos else ("min_tokens", req.min_new_tokens)
            raise ApiError(400, f"{name}={value!r} is not supported by this server's engine "
                                f"({self.engine.config.label()}): it cannot mask EOS, so the length would not be "
                                f"what was asked for; leave {name} unset", param=name)

    def _observe(self, timing: dict[str, Any], n_out: int) -> None:
        m = self.metrics
        m.output_tokens += n_out
        toks = timing["token_ns"]
        if toks:
            m.ttft.observe((toks[0] - timing["arrival_ns"]) / 1e9)
            m.e2e.observe((toks[-1] - timing["arrival_ns"]) / 1e9)
        if timing.get("batch_start_ns") is not None:  # None when a stop string ended it (stops.py)
            m.queue_wait.observe((timing["batch_start_ns"] - timing["arrival_ns"]) / 1e9)

    @staticmethod
    def _usage(n_in: int, n_out: int) -> dict[str, int]:
        return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}

    async def _collect(self, request: Request, job: Job, reader: JobReader, p: ParsedRequest,
                       rid: str, n_in: int, warnings: list[str], endpoint: str, admitted_ns: int) -> Response:
        # a non-streaming client that goes away is noticed by waiting on receive()
        watcher = asyncio.ensure_future(request.receive())
        pieces: list[str] = []
        ids: list[int] = []
        try:
            while True:
                getter = asyncio.ensure_future(reader.get())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    if watcher.result().get("type") == "http.disconnect":
                        job.cancel()
                        self.metrics.cancelled += 1
                        return Response(status_code=499)
                    watcher = asyncio.ensure_future(request.receive())
                    continue
                msg = getter.result()
                if isinstance(msg, Token):
                    ids.append(msg.token_id)
                    pieces.append(msg.text)
                elif isinstance(msg, Failed):
                    return self._error(endpoint, ApiError(msg.status, msg.message, kind="server_error"))
                elif isinstance(msg, Done):
                    reason, timing, token_ids = msg.finish_reason, msg.timing, list(msg.token_ids)
                    break
        finally:
            watcher.cancel()
        self._observe(timing, len(token_ids))
        text = "".join(pieces)
        choice: dict[str, Any] = {"index": 0, "finish_reason": FINISH.get(reason, reason), "token_ids": token_ids}
        if p.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text, logprobs=None)
        out: dict[str, Any] = {"id": rid, "object": "chat.completion" if p.chat else "text_completion",
                               "created": int(time.time()), "model": self.model_name, "choices": [choice],
                               "usage": self._usage(n_in, len(token_ids))}
        if warnings:
            out["warnings"] = warnings
        if p.return_timing:
            out["timing"] = {**timing, "admitted_ns": admitted_ns}
        self.metrics.requests[(endpoint, 200)] += 1
        return Response(_dumps(out), media_type="application/json")

    async def _sse(self, job: Job, reader: JobReader, p: ParsedRequest, rid: str, n_in: int,
                   warnings: list[str], endpoint: str, admitted_ns: int) -> AsyncIterator[str]:
        created = int(time.time())
        obj = "chat.completion.chunk" if p.chat else "text_completion"
        head = (f'data: {{"id":"{rid}","object":"{obj}","created":{created},"model":{_dumps(self.model_name)},'
                '"choices":[{"index":0,')
        key = '"delta":{"content":' if p.chat else '"text":'
        close = "}" if p.chat else ""
        cont = p.continuous_usage
        finished = False
        n_out = 0
        last_write_ns: int | None = None  # taken only when the client asked for the timing
        try:
            if p.chat:
                yield head + '"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
            while True:
                msg = await reader.get()
                if isinstance(msg, Token):
                    # one event per token; tokens that are already waiting go out in one write
                    events = []
                    for tok in [msg, *reader.ready_tokens()]:
                        n_out += 1
                        end = _chunk_end(n_in, n_out, cont)
                        events.append(f'{head}{key}{_dumps(tok.text)}{close},"token_ids":[{tok.token_id}],'
                                      f'"finish_reason":null{end}')
                    if p.return_timing:
                        last_write_ns = now_ns()
                    yield "".join(events)
                elif isinstance(msg, Done):
                    reason, timing, token_ids = msg.finish_reason, msg.timing, list(msg.token_ids)
                    finished = True
                    self._observe(timing, len(token_ids))
                    empty = '"delta":{}' if p.chat else '"text":""'
                    end = _chunk_end(n_in, n_out, cont)
                    yield f'{head}{empty},"finish_reason":"{FINISH.get(reason, reason)}"{end}'
                    tail: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": self.model_name,
                                            "choices": []}
                    if p.include_usage:
                        tail["usage"] = self._usage(n_in, len(token_ids))
                    if warnings:
                        tail["warnings"] = warnings
                    if p.return_timing:
                        tail["timing"] = {**timing, "admitted_ns": admitted_ns, "last_write_ns": last_write_ns}
                    yield f"data: {_dumps(tail)}\n\ndata: [DONE]\n\n"
                    self.metrics.requests[(endpoint, 200)] += 1
                    return
                elif isinstance(msg, Failed):  # error after the stream started: an error event, then the end
                    finished = True
                    err = ApiError(msg.status, msg.message, kind="server_error")
                    self.metrics.requests[(endpoint, msg.status)] += 1
                    yield f"data: {_dumps(err.body())}\n\ndata: [DONE]\n\n"
                    return
        finally:
            if not finished:  # the client went away (or the server is stopping): free the slot
                job.cancel()
                self.metrics.cancelled += 1
                self.metrics.requests[(endpoint, 499)] += 1


def create_app(engine: Engine, batch: BatchConfig | None = None, model_name: str | None = None,
               limits: Limits | None = None, bind_host: str = "127.0.0.1") -> Guard:
    return Server(engine, batch, model_name, limits, bind_host).app
