"""Per-request records: raw timestamps only, no derived numbers.

A :class:`RequestRecord` is written by exactly one timing point (the engine-side streaming
adapter, or the client's reader) and consumed by the pure functions of
:mod:`testbed.metrics.formulas`.  All times are ``perf_counter_ns`` integers from
:func:`testbed.clock.now_ns`; symbols follow METRICS.md:

* ``schedule_ns`` = s_i (scheduled issue time), ``send_ns`` = a_i (actual send),
* ``chunk_ns[k]`` = t_ik (receipt of token chunk k), ``chunk_tokens[k]`` its token count,
* ``first_token_ns`` = f_i is ``chunk_ns[0]`` and ``last_token_ns`` = e_i is ``chunk_ns[-1]``,
* ``n_out`` = N_i counted from token ids, ``n_in`` the prompt tokens,
* ``last_visible_ns``: receipt of the last chunk with non-empty text (an EOS streamed as an
  event of its own has none), so E2E can also be read as clients that time text only do.

A failed request keeps ``ok=False`` and its ``error``; it never yields a latency sample.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestRecord:
    request_id: str
    schedule_ns: int
    send_ns: int
    chunk_ns: list[int] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    done_ns: int | None = None
    n_in: int = 0
    n_out: int = 0
    ok: bool = True
    error: str | None = None
    warmup: bool = False
    # engine side: when decoding of this request started (after tokenisation and queueing; the
    # start of the encoder pass for seq2seq), and the end of the encoder pass (engines that report it)
    decode_start_ns: int | None = None
    encoder_done_ns: int | None = None
    # receipt of the last chunk that carried visible text (a trailing EOS event has none)
    last_visible_ns: int | None = None
    # free-form: the output text, finish reason, truncation notice, ...
    output: str | None = None
    finish_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def first_token_ns(self) -> int | None:
        return self.chunk_ns[0] if self.chunk_ns else None

    @property
    def last_token_ns(self) -> int | None:
        return self.chunk_ns[-1] if self.chunk_ns else None

    def fail(self, error: str, done_ns: int | None = None) -> None:
        self.ok = False
        self.error = error
        self.done_ns = done_ns

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RequestRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
