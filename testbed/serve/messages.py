"""What the scheduler tells a request's consumer: typed, frozen messages, read by one helper.

A job's messages, in order: :class:`Admitted` (tokenised; or :class:`Failed` at once), then one
:class:`Token` per generated token, then :class:`Done` (or :class:`Failed` if the engine or the
deadline ended it).  The scheduler posts them from its worker thread; the server and the
in-process load target both read them through :class:`JobReader`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from testbed.clock import now_ns


@dataclass(frozen=True)
class Admitted:
    n_in: int
    warnings: tuple[str, ...] = ()
    # when the request was tokenised and admitted (the message is made right after ``prepare``):
    # the end of the waterfall's "intake + tokenisation" phase
    t_ns: int = field(default_factory=now_ns, compare=False)


@dataclass(frozen=True)
class Token:
    token_id: int
    text: str
    t_ns: int  # engine-side: the end of the step that chose it


@dataclass(frozen=True)
class Done:
    finish_reason: str
    timing: dict[str, Any] = field(hash=False)
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Failed:
    status: int  # the HTTP status it maps to: 400 bad input, 429/503 refused, 500 engine failure, 504 deadline
    message: str


Message = Admitted | Token | Done | Failed


class JobReader:
    """One job's messages from its asyncio queue (filled by a :class:`~testbed.serve.batcher.LoopMailbox`)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()

    def put(self, msg: Message) -> None:
        self.queue.put_nowait(msg)

    async def get(self) -> Message:
        return await self.queue.get()

    def ready_tokens(self) -> list[Token]:
        """The tokens already waiting, without blocking (one network write for a burst)."""
        out: list[Token] = []
        q = self.queue
        while not q.empty() and isinstance(q._queue[0], Token):  # type: ignore[attr-defined]
            out.append(q.get_nowait())  # type: ignore[arg-type]
        return out
