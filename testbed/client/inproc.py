"""In-process scenarios: requests go straight to an engine, no transport.

The engine-side :class:`testbed.engines.base.Stream` takes the timestamps; this module only
decides when requests are issued.  SingleStream: one request at a time, the next when the
previous finished (``s_i`` = the previous request's end, so dispatch delay is 0 by construction).
Warm-up requests are run first, recorded with ``warmup=True`` and excluded by the summaries.
A request that raises is recorded as failed with its error, and the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from testbed.datasets import Example
from testbed.engines.base import Engine, GenerationRequest
from testbed.metrics.records import RequestRecord

Progress = Callable[[int, int], None]


def request_of(ex: Example, max_new_tokens: int | None = None) -> GenerationRequest:
    return GenerationRequest(text=ex.text, messages=ex.messages, max_new_tokens=max_new_tokens,
                             request_id=ex.id)


def run_one(engine: Engine, request: GenerationRequest, warmup: bool = False,
            keep_token_ids: bool = False) -> RequestRecord:
    """One request through ``engine.stream``; its engine-side record (a failure is recorded, never raised).

    ``keep_token_ids`` stores the output's token ids in ``record.extra["token_ids"]``.
    """
    t0 = engine.clock()
    try:
        stream = engine.stream(request)
        stream.run()
    except Exception as exc:  # recorded, never a 0 ms sample
        rec = RequestRecord(request_id=request.request_id, schedule_ns=t0, send_ns=t0, warmup=warmup)
        rec.fail(f"{type(exc).__name__}: {exc}", engine.clock())
        return rec
    rec = stream.record(warmup=warmup)
    if keep_token_ids:
        rec.extra["token_ids"] = stream.token_ids
    return rec


def singlestream(
    engine: Engine, examples: Sequence[Example], warmup: int = 5,
    max_new_tokens: int | None = None, progress: Progress | None = None,
) -> list[RequestRecord]:
    """Run ``warmup`` requests (cycled from the set), then every example once, in order."""
    records: list[RequestRecord] = []
    total = warmup + len(examples)
    for i in range(warmup):
        records.append(run_one(engine, request_of(examples[i % len(examples)], max_new_tokens), warmup=True))
        if progress:
            progress(i + 1, total)
    for j, ex in enumerate(examples):
        records.append(run_one(engine, request_of(ex, max_new_tokens)))
        if progress:
            progress(warmup + j + 1, total)
    return records
