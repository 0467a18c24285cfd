"""The one reader of an OpenAI-compatible SSE stream: lines in, a :class:`RequestRecord` filled.

Every HTTP client of the load generator (the lean client, aiohttp, httpx, and the Locust
comparison in ``bench/``) feeds the same :class:`SseReader`, so they differ only in transport.
The caller takes the receipt time ``t`` (``perf_counter_ns``) and passes it with each line; the
reader takes no time itself.  Per ``data:`` event with a ``choices[0]`` piece:

* a chunk counts ``len(token_ids)`` tokens when the server sends them (testbed does), else 1 per
  non-empty text piece (vLLM, TGI);  counted chunks give ``chunk_ns`` / ``chunk_tokens``;
* ``last_visible_ns``: the receipt of the last chunk whose text is not empty.  testbed's server
  streams EOS as an event of its own with empty text, so its ``e2el`` (last token chunk) ends one
  event after the last visible text; clients that time visible text only end there;
* ``n_out`` comes from the server's ``usage.completion_tokens`` (token ids), else from the chunks
  (and the record says so).  When ``usage`` counts more tokens than the timed chunks carried --
  e.g. a server that sends EOS as an empty chunk without token ids -- the difference is recorded
  as ``extra["untimed_tokens"]`` and TPOT divides by the timed tokens only
  (:func:`testbed.metrics.summary.tpot_ms`).
"""

from __future__ import annotations

import json
from typing import Any

from testbed.metrics.records import RequestRecord
from testbed.metrics.summary import NO_TOKENS_ERROR

_decode = json.JSONDecoder().raw_decode  # ~3x faster than json.loads(bytes) per event

REASONS = {400: "bad request", 404: "not found", 413: "too large", 429: "rejected: queue full",
           500: "server error", 503: "rejected: unavailable", 504: "deadline exceeded"}


def error_label(status: int) -> str:
    """The error string of a request that got HTTP ``status`` (shared by every target)."""
    return f"status {status} ({REASONS.get(status, 'error')})"


class SseReader:
    """Parse one response's SSE lines into ``rec``; :meth:`line` returns True at ``[DONE]``."""

    __slots__ = ("rec", "chat", "pieces", "usage", "finished", "failed")

    def __init__(self, rec: RequestRecord, chat: bool) -> None:
        self.rec = rec
        self.chat = chat
        self.pieces: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.finished = False
        self.failed = False

    def line(self, line: bytes, t: int) -> bool:
        """One line received at ``t``; True once the stream is over (``[DONE]`` or an error event)."""
        if self.finished or not line.startswith(b"data:"):
            return self.finished
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.finished = True
            return True
        obj, _ = _decode(payload.decode())
        rec = self.rec
        if "error" in obj:
            err = obj["error"] if isinstance(obj["error"], dict) else {"message": str(obj["error"])}
            code = err.get("code")
            rec.fail(error_label(code) if isinstance(code, int) else "error event in stream", t)
            rec.extra["error_message"] = err.get("message")
            self.finished = self.failed = True
            return True
        choices = obj.get("choices")
        if choices:
            c = choices[0]
            piece = (c.get("delta") or {}).get("content") if self.chat else c.get("text")
            ids = c.get("token_ids")
            count = len(ids) if ids else (1 if piece else 0)
            if count:
                rec.chunk_ns.append(t)
                rec.chunk_tokens.append(count)
                self.pieces.append(piece or "")
            if piece:
                rec.last_visible_ns = t
            if c.get("finish_reason"):
                rec.finish_reason = c["finish_reason"]
        if obj.get("usage"):
            self.usage = obj["usage"]
        if obj.get("timing"):
            rec.extra["server_timing"] = obj["timing"]
        return False

    def finish(self, t: int) -> None:
        """The response ended at ``t``: set ``done_ns``, output and token counts (or fail: no tokens)."""
        rec = self.rec
        if self.failed:
            return
        rec.done_ns = t
        rec.output = "".join(self.pieces)
        timed = sum(rec.chunk_tokens)
        usage = self.usage
        if usage and isinstance(usage.get("completion_tokens"), int):
            rec.n_out = usage["completion_tokens"]
            rec.n_in = int(usage.get("prompt_tokens") or 0)
            if rec.n_out > timed:
                rec.extra["untimed_tokens"] = rec.n_out - timed
        else:  # a server that sends no usage: chunks counted, and the record says so
            rec.n_out = timed
            rec.extra["n_out_source"] = "chunks (no usage from the server)"
        if not rec.chunk_ns:
            rec.fail(NO_TOKENS_ERROR, t)
