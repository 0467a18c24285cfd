"""E2E to the last *visible* token, next to METRICS.md's E2E (last token chunk).

testbed's server streams EOS as an event of its own (its token id, empty text), so ``e_i`` --
the last token chunk -- is the EOS event, about one event after the last text a user sees.
Clients that time visible text only (and servers that send EOS as an empty chunk without token
ids) end E2E at the last non-empty piece.  Both are reported so results compare:
``e2el_ms`` = ``e_i - s_i`` and ``e2el_visible_ms`` = ``v_i - s_i`` with ``v_i`` =
``RequestRecord.last_visible_ns``.  Pure functions; failed and warm-up requests give no sample.
"""

from __future__ import annotations

from collections.abc import Iterable

from testbed.metrics.records import RequestRecord
from testbed.metrics.summary import DEFAULT_PERCENTILES, is_completed, percentiles


def e2e_visible_ms(r: RequestRecord) -> float | None:
    """``(v_i - s_i)`` in ms, ``v_i`` the receipt of the last chunk with text; None if not completed or no text."""
    if not is_completed(r) or r.last_visible_ns is None:
        return None
    return (r.last_visible_ns - r.schedule_ns) / 1e6


def visible_stats(records: Iterable[RequestRecord]) -> dict[str, float | None]:
    """``mean/median/p90/p99_e2el_visible_ms`` and ``median_eos_tail_ms`` (``e_i - v_i``) over completed runs."""
    done = [r for r in records if not r.warmup and is_completed(r)]
    st = percentiles([e2e_visible_ms(r) for r in done], DEFAULT_PERCENTILES)
    tail = percentiles([(r.chunk_ns[-1] - r.last_visible_ns) / 1e6 for r in done if r.last_visible_ns is not None],
                       (50,))
    return {"mean_e2el_visible_ms": st["mean"], "median_e2el_visible_ms": st["p50"],
            "p90_e2el_visible_ms": st["p90"], "p99_e2el_visible_ms": st["p99"],
            "median_eos_tail_ms": tail["p50"]}
