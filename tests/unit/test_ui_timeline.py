"""The demo's waterfall assembly (page + UI server + engine or server times) and its start
configuration from a sweep, on scripted timestamps and hand-written sweep rows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from testbed.engines.base import GenerationRequest
from testbed.metrics.records import RequestRecord
from testbed.ui import defaults, timeline
from testbed.ui.direct import Ticket

MS = 1_000_000
OFF = 5000.0  # server ms - page ms


def _page(t0: float, recv: float, dom: float) -> dict[str, float]:
    """Page times in page ms for events at server times t0 / recv / dom (ms)."""
    return {"t0": t0 - OFF, "recv_last": recv - OFF, "dom_last": dom - OFF, "offset": OFF, "rtt": 0.4}


def _wf(t: Ticket, page: dict[str, float]) -> list[tuple[str, float, float]]:
    wf = timeline.waterfall("x", *timeline.direct_marks(t, page))
    return [(p.name, round(p.start_ms, 6), round(p.end_ms, 6)) for p in wf.phases]


def test_inprocess_answer_on_the_server_clock() -> None:
    base = 1000 * MS
    t = Ticket("translate", "A", "A: x", GenerationRequest(text="hi"), arrival_ns=base + 3 * MS,
               last_write_ns=base + 20 * MS)
    t.record = RequestRecord("r", base + 4 * MS, base + 4 * MS, chunk_ns=[base + 10 * MS, base + 15 * MS],
                             chunk_tokens=[1, 1], n_out=2, decode_start_ns=base + 5 * MS,
                             encoder_done_ns=base + 8 * MS)
    got = _wf(t, _page(1000, 1022, 1023))
    assert got == [(timeline.PAGE_SEND, 0, 3), (timeline.LOCK, 3, 4), ("tokenisation", 4, 5),
                   ("encoder pass", 5, 8), ("first decoding step", 8, 10), ("later tokens", 10, 15),
                   ("detokenisation + hand-off", 15, 20), (timeline.TO_PAGE, 20, 22), (timeline.RENDER, 22, 23)]


@pytest.mark.parametrize("url,shift", [("http://127.0.0.1:8000", 0), ("http://gpu-box:8000", 7 * MS)])
def test_served_answer_loopback_shares_the_clock_remote_is_aligned(url: str, shift: int) -> None:
    base = 1000 * MS
    timing = {"arrival_ns": base + 5 * MS + shift, "admitted_ns": base + 6 * MS + shift,
              "decode_start_ns": base + 7 * MS + shift, "token_ns": [base + 9 * MS + shift, base + 11 * MS + shift],
              "last_write_ns": base + 12 * MS + shift}
    t = Ticket("translate", "A", "A: m @ u", GenerationRequest(text="hi"), url=url, arrival_ns=base + 2 * MS,
               proxy_send_ns=base + 4 * MS, proxy_last_recv_ns=base + 13 * MS, last_write_ns=base + 14 * MS,
               server_timing=timing)
    got = _wf(t, _page(1000, 1016, 1017))
    assert [g[0] for g in got] == [timeline.PAGE_SEND, timeline.PROXY, timeline.SERVER_SEND, "intake + tokenisation",
                                   "queue wait", "first decoding step", "later tokens", "detokenisation + hand-off",
                                   timeline.BACK, timeline.RELAY, timeline.TO_PAGE, timeline.RENDER]
    # loopback: the server's own times; remote: 7 ms off, aligned so both network legs are 1 ms
    assert got[2] == (timeline.SERVER_SEND, 4, 5) and got[8] == (timeline.BACK, 12, 13)
    assert got[-1][2] == 17


def _sweep(path: Path, rows: list[dict[str, object]], age: float) -> None:
    path.mkdir(parents=True)
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.utime(path / "results.jsonl", (age, age))


def _row(label: str, engine: str, precision: str, verdict: str, p90: float) -> dict[str, object]:
    return {"label": label, "status": "ok", "config": {"engine": engine, "precision": precision, "pruning": "none",
                                                       "threads": 1},
            "signature": {"model": "marian-en-de"}, "gate": {"verdict": verdict}, "singlestream": {"p90_e2el_ms": p90}}


def test_start_configuration_is_the_fastest_that_passed_in_the_newest_sweep(tmp_path: Path) -> None:
    assert "no sweep of marian-en-de" in defaults.start_config("translate", tmp_path).note
    _sweep(tmp_path / "old", [_row("fake/fp32", "fake", "fp32", "pass", 1.0)], 1_000_000)
    _sweep(tmp_path / "new", [_row("torch/fp32", "torch", "fp32", "pass", 200.0),
                              _row("torch/int8", "torch", "int8", "within noise", 50.0),
                              _row("torch/bf16", "torch", "bf16", "pass", 150.0),
                              _row("needs/x", "no-such-engine", "fp32", "pass", 10.0)], 2_000_000)
    s = defaults.start_config("translate", tmp_path)
    assert (s.engine, s.precision, s.threads) == ("torch", "bf16", "1")
    assert "torch/bf16" in s.note and "150.0 ms" in s.note and "new" in s.note and "needs/x" in s.note
    # the chat tab has no sweep of its model here
    assert defaults.start_config("chat", tmp_path).engine == "torch"
