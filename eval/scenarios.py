"""The sweep's scenarios on in-process engines: Offline, batch 1, and SingleStream in rounds.

* :func:`offline`: ``warmup_batches`` batches run first and excluded (the first examples of the
  set, as one batch each; their time is returned apart), then every example in batches formed
  over the set sorted by source length (an Offline server owns its queue order; it keeps padding
  low) -> the outputs in input order, with their token ids, and the wall time of the whole set.
* :func:`at_batch1`: the same examples decoded one at a time through the same ``generate`` path:
  the configuration at batch 1, for the batch divergence (:mod:`testbed.eval.divergence`).
* :func:`singlestream_rounds`: SingleStream interleaved across configurations.  Every engine is
  loaded once and kept; warm-up rounds first (excluded), then round ``j`` sends example ``j``
  once to every configuration, one request at a time, the order rotated by one position per
  round, so every configuration runs in every position equally often and latency ratios are
  measured under the same machine conditions.  ``on_round`` receives each finished round (the
  runner checkpoints it); a configuration resumes at its own next round (``start``).

Timestamps come from the engines' clocks only (:class:`testbed.engines.base.Stream`); this
module decides what runs when.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from testbed.client.inproc import request_of, run_one
from testbed.datasets import Example
from testbed.engines.base import Engine, Generation
from testbed.metrics.records import RequestRecord

Progress = Callable[[int], None]
OnRound = Callable[[int, dict[str, RequestRecord]], None]


def _size(ex: Example) -> int:
    return len(ex.text) if ex.text is not None else len(json.dumps(ex.messages))


def _output(ex: Example, gen: Generation) -> dict[str, Any]:
    return {"id": ex.id, "output": gen.text, "n_out": len(gen.token_ids), "token_ids": list(gen.token_ids),
            "finish_reason": gen.finish_reason}


def offline(
    engine: Engine, examples: Sequence[Example], batch: int, max_new_tokens: int, warmup_batches: int = 1,
    progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], int, int]:
    """``(outputs in input order, wall time of the set in ns, warm-up time in ns)``; see the module docstring."""
    t_warm = engine.clock()
    for w in range(warmup_batches):
        chunk = [examples[(w * batch + i) % len(examples)] for i in range(min(batch, len(examples)))]
        engine.generate([request_of(ex, max_new_tokens) for ex in chunk])
    warm_ns = engine.clock() - t_warm

    order = sorted(range(len(examples)), key=lambda i: _size(examples[i]))
    outs: list[dict[str, Any] | None] = [None] * len(examples)
    t0 = engine.clock()
    for start in range(0, len(order), batch):
        chunk_ids = order[start : start + batch]
        gens = engine.generate([request_of(examples[i], max_new_tokens) for i in chunk_ids])
        for i, g in zip(chunk_ids, gens):
            outs[i] = _output(examples[i], g)
        if progress:
            progress(len(chunk_ids))
    elapsed = engine.clock() - t0
    return [o for o in outs if o is not None], elapsed, warm_ns


def offline_served(
    engine: Engine, examples: Sequence[Example], batch: int, mode: str, max_new_tokens: int, warmup_batches: int = 1,
    progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], int, int]:
    """:func:`offline` through the server's scheduler (batching ``mode``, max batch ``batch``): every
    request submitted at once, in input order; the time from the first submission to the last answer."""
    import threading

    from testbed.serve.batcher import BatchConfig, Batcher
    from testbed.serve.messages import Done, Failed

    b = Batcher(engine, BatchConfig(max_batch_size=batch, max_wait_ms=2.0, max_queue=len(examples) + batch,
                                    timeout_s=86_400, batching=mode))

    def run(exs: Sequence[Example]) -> tuple[list[Any], int]:
        finals: list[Any] = [None] * len(exs)
        left = threading.Semaphore(0)

        def sink_for(i: int) -> Any:
            def sink(msg: Any) -> None:
                if isinstance(msg, (Done, Failed)):
                    finals[i] = msg
                    left.release()
                    if progress and exs is examples:
                        progress(1)
            return sink

        t0 = engine.clock()
        for i, ex in enumerate(exs):
            b.submit(request_of(ex, max_new_tokens), sink_for(i))
        for _ in exs:
            left.acquire()
        return finals, engine.clock() - t0

    try:
        warm = [examples[i % len(examples)] for i in range(min(batch, len(examples)) * warmup_batches)]
        _, warm_ns = run(warm) if warm else (None, 0)
        finals, elapsed = run(examples)
    finally:
        b.stop()
    outs = []
    for ex, msg in zip(examples, finals):
        if isinstance(msg, Failed):
            raise RuntimeError(f"request {ex.id} failed in the served Offline run: {msg.status} {msg.message}")
        ids = list(msg.token_ids)
        outs.append({"id": ex.id, "output": engine.decode(ids), "n_out": len(ids), "token_ids": ids,
                     "finish_reason": msg.finish_reason})
    return outs, elapsed, warm_ns


def at_batch1(
    engine: Engine, examples: Sequence[Example], max_new_tokens: int, progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Each example decoded alone (``generate`` of a batch of one), in input order."""
    outs = []
    for ex in examples:
        outs.append(_output(ex, engine.generate([request_of(ex, max_new_tokens)])[0]))
        if progress:
            progress(1)
    return outs


def rotated(keys: Sequence[str], j: int) -> list[str]:
    """The order of round ``j``: ``keys`` rotated left by ``j`` positions."""
    if not keys:
        return []
    k = j % len(keys)
    return [*keys[k:], *keys[:k]]


def singlestream_rounds(
    engines: Mapping[str, Engine], examples: Sequence[Example], warmup: int, max_new_tokens: int | None,
    start: Mapping[str, int] | None = None, on_round: OnRound | None = None, tag: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> None:
    """Warm-up rounds, then one round per example from each configuration's ``start``; see the module docstring.

    ``tag`` is copied into every record's ``extra`` (e.g. the session), with the round and position.
    Warm-up rounds are numbered ``-warmup .. -1``.
    """
    keys = list(engines)
    begin = {k: (start or {}).get(k, 0) for k in keys}
    todo = [k for k in keys if begin[k] < len(examples)]
    for w in range(warmup):
        _round(engines, rotated(todo, w), examples[w % len(examples)], max_new_tokens, w - warmup, True,
               tag, on_round, progress)
    for j in range(min((begin[k] for k in todo), default=len(examples)), len(examples)):
        live = [k for k in todo if begin[k] <= j]
        _round(engines, rotated(live, j), examples[j], max_new_tokens, j, False, tag, on_round, progress)


def _round(
    engines: Mapping[str, Engine], order: Sequence[str], ex: Example, max_new_tokens: int | None, j: int,
    warmup: bool, tag: dict[str, Any] | None, on_round: OnRound | None, progress: Progress | None,
) -> None:
    from testbed.eval.results import load1

    load = load1()  # read between requests, never inside a timed one
    done: dict[str, RequestRecord] = {}
    for pos, key in enumerate(order):
        rec = run_one(engines[key], request_of(ex, max_new_tokens), warmup=warmup)
        rec.extra.update(tag or {})
        rec.extra.update(round=j, position=pos, load1=load)
        done[key] = rec
        if progress:
            progress(1)
    if on_round:
        on_round(j, done)
