"""Stop strings (OpenAI ``stop``): end a generation when its text contains one.

A :class:`StopFilter` sits between the batcher's messages and a response (streamed or not): it
is the ``put`` that the loop's mailbox calls with each worker message (on the event loop's
thread), and it forwards to the response's queue:

* token messages, each unchanged, while no stop string can be starting; a token whose text might
  be the start of a stop string (a suffix of the text so far is a prefix of one) is **held back**
  until the next tokens decide, so the stop string is never sent, streamed or not;
* when the text contains a stop string: the held tokens, each with its text cut where the stop
  string begins (their ids are sent: they were generated and count in ``usage``), then
  ``Done("stop", timing, token_ids)``; the job is cancelled, so the scheduler frees its row
  (the response says ``finish_reason: "stop"``);
* at the natural end (``done``): the held tokens as they are, then the ``done``.

Every other message passes through.  Messages after the stop (tokens already on their way
before the cancel took effect) are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from testbed.serve.messages import Done, Message, Token


class StopFilter:
    def __init__(self, stops: tuple[str, ...], put: Callable[[Message], None], arrival_ns: int) -> None:
        self.stops = stops
        self.put = put
        self.arrival_ns = arrival_ns
        self.job: Any = None  # set after Batcher.submit: cancelled when a stop string is found
        self.text = ""  # all generated text so far
        self.released = 0  # characters of ``text`` forwarded
        self.held: list[tuple[int, str, int, int]] = []  # (token id, text, t_ns, start offset in self.text)
        self.ids: list[int] = []
        self.token_ns: list[int] = []
        self.hit: str | None = None

    def __call__(self, msg: Message) -> None:
        if self.hit is not None:
            return
        if isinstance(msg, Token):
            self._token(msg.token_id, msg.text, msg.t_ns)
        elif isinstance(msg, Done):
            self._release(len(self.held), None)
            self.put(msg)
        else:
            self.put(msg)

    def _token(self, token_id: int, text: str, t_ns: int) -> None:
        start = len(self.text)
        self.held.append((token_id, text, t_ns, start))
        self.text += text
        found = [(p, s) for s in self.stops if (p := self.text.find(s, self.released)) >= 0]
        if found:
            cut, stop = min(found)
            self.hit = stop
            self._release(len(self.held), cut)
            if self.job is not None:
                self.job.cancel()
            end = self.token_ns[-1] if self.token_ns else None
            timing = {"arrival_ns": self.arrival_ns, "batch_start_ns": None, "decode_start_ns": None,
                      "encoder_done_ns": None, "token_ns": list(self.token_ns), "end_ns": end, "stop": stop}
            self.put(Done("stop", timing, tuple(self.ids)))
            return
        # release the tokens that lie wholly before the longest suffix that could start a stop string
        safe = len(self.text) - self._pending_prefix()
        n = 0
        while n < len(self.held) and self.held[n][3] + len(self.held[n][1]) <= safe:
            n += 1
        self._release(n, None)

    def _pending_prefix(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text) - self.released), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _release(self, n: int, cut: int | None) -> None:
        """Forward the first ``n`` held tokens; with ``cut``, their text ends at that offset."""
        for token_id, text, t_ns, start in self.held[:n]:
            if cut is not None:
                text = text[: max(0, cut - start)]
            self.ids.append(token_id)
            self.token_ns.append(t_ns)
            self.put(Token(token_id, text, t_ns))
            self.released = start + len(text)
        del self.held[:n]
