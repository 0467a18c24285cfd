"""The latency waterfall (testbed.report.waterfall): phases from scripted timestamps.

Every test asserts concrete phase names, bounds and sums, so a phase in the wrong place, a
missing one or a gap fails it.  No sleeps; the server test uses the fake engine on 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from testbed.cli import main
from testbed.config import EngineConfig
from testbed.engines.fake.engine import FakeEngine
from testbed.errors import TestbedError
from testbed.metrics import summary as S
from testbed.metrics.records import RequestRecord
from testbed.report import waterfall as W
from testbed.serve.batcher import BatchConfig
from testbed.serve.run import BackgroundServer

MS = 1_000_000


def _names(wf: W.Waterfall) -> list[str]:
    return [p.name for p in wf.phases]


def _bounds(wf: W.Waterfall) -> list[tuple[float, float]]:
    return [(p.start_ms, p.end_ms) for p in wf.phases]


def inproc_record() -> RequestRecord:
    """A Stream.record(): scheduled = sent = stream start (t=100 ms), tokens are engine times."""
    t0 = 100 * MS
    return RequestRecord("r1", schedule_ns=t0, send_ns=t0, chunk_ns=[t0 + 8 * MS, t0 + 10 * MS, t0 + 12 * MS],
                         chunk_tokens=[1, 1, 1], n_out=3, decode_start_ns=t0 + 2 * MS, encoder_done_ns=t0 + 5 * MS)


def test_inprocess_record_phases_tile_the_e2e() -> None:
    rec = inproc_record()
    wf = W.of_record(rec)
    assert _names(wf) == [W.TOKENISE, W.ENCODER, W.FIRST_STEP, W.LATER]
    assert _bounds(wf) == [(0, 2), (2, 5), (5, 8), (8, 12)]
    assert wf.phases[-1].ticks_ms == (10, 12)
    assert sum(p.duration_ms for p in wf.phases) == pytest.approx(S.e2e_ms(rec))
    assert wf.total_ms == pytest.approx(S.e2e_ms(rec)) and not wf.notes


def test_served_record_uses_the_server_timing_between_client_times() -> None:
    ms = lambda v: int(v * MS)  # noqa: E731
    timing = {"arrival_ns": ms(1.5), "admitted_ns": ms(2), "decode_start_ns": ms(3), "encoder_done_ns": ms(4),
              "token_ns": [ms(6), ms(7), ms(8)], "end_ns": ms(8), "last_write_ns": ms(8.25)}
    rec = RequestRecord("r2", schedule_ns=0, send_ns=ms(1), chunk_ns=[ms(6.5), ms(7.5), ms(9)],
                        chunk_tokens=[1, 1, 1], n_out=3, extra={"server_timing": timing})
    wf = W.of_record(rec)
    assert _names(wf) == [W.DISPATCH, W.SEND, W.INTAKE, W.QUEUE, W.ENCODER, W.FIRST_STEP, W.LATER, W.DETOK,
                          W.TRANSPORT]
    assert _bounds(wf) == [(0, 1), (1, 1.5), (1.5, 2), (2, 3), (3, 4), (4, 6), (6, 8), (8, 8.25), (8.25, 9)]
    assert [p.source for p in wf.phases][:3] == ["client", "client -> server", "server"]
    assert wf.phases[4].source == "engine"
    assert wf.total_ms == pytest.approx(S.e2e_ms(rec))
    # a server without admitted_ns (an older testbed serve): queue and tokenisation as one phase
    del timing["admitted_ns"]
    assert W.QUEUE_TOK in _names(W.of_record(rec)) and W.INTAKE not in _names(W.of_record(rec))


def test_a_mark_before_its_predecessor_is_moved_up_and_noted() -> None:
    marks = [W.Mark("a", 5 * MS, "page"), W.Mark("b", 4 * MS, "server"), W.Mark("c", 9 * MS, "page")]
    wf = W.build("x", 0, marks)
    assert _bounds(wf) == [(0, 5), (5, 5), (5, 9)]
    assert len(wf.notes) == 1 and "b:" in wf.notes[0] and "1.000 ms" in wf.notes[0]
    assert wf.total_ms == 9


def test_median_and_pick_and_what_has_no_waterfall() -> None:
    recs = []
    for i, e2e in enumerate((30, 10, 20, 40, 5)):
        r = RequestRecord(f"q{i}", 0, 0, chunk_ns=[e2e * MS], chunk_tokens=[1], n_out=1)
        recs.append(r)
    recs[4].warmup = True  # excluded
    failed = RequestRecord("bad", 0, 0)
    failed.fail("HTTP 500")
    recs.append(failed)
    assert W.median_record(recs).request_id == "q2"  # 10, 20, 30, 40 -> the lower middle: 20
    assert W.pick(recs, "q3").request_id == "q3"
    with pytest.raises(TestbedError, match="no such request.*q0, q1"):
        W.pick(recs, "zzz")
    with pytest.raises(TestbedError, match="HTTP 500"):
        W.of_record(failed)
    with pytest.raises(TestbedError, match="no completed"):
        W.median_record([failed])


def test_report_waterfall_cli_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text(inproc_record().to_json() + "\n", encoding="utf-8")
    out = tmp_path / "wf.png"
    assert main(["report", "--waterfall", str(path), "--request", "r1", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert W.ENCODER in printed and W.LATER in printed
    assert main(["report", "--waterfall", str(path)]) == 2  # no --out: a clear error
    assert "--out FILE.png is required" in capsys.readouterr().err
    assert main(["report", "--waterfall", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_served_stream_timing_has_admission_and_last_write() -> None:
    eng = FakeEngine(EngineConfig(engine="fake", max_new_tokens=16)).load()
    with BackgroundServer(eng, BatchConfig()) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        body = {"prompt": "one two three", "stream": True, "return_timing": True}
        with c.stream("POST", "/v1/completions", json=body) as r:
            frames = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    t = next(f["timing"] for f in frames if f.get("timing"))
    assert t["arrival_ns"] <= t["admitted_ns"] <= t["decode_start_ns"] <= t["token_ns"][0]
    assert t["token_ns"][-1] <= t["last_write_ns"]
    wf = W.build("served", t["arrival_ns"], W.server_marks(t))
    assert _names(wf)[:2] == [W.INTAKE, W.QUEUE] and _names(wf)[-1] == W.DETOK and not wf.notes


def test_end_bounds_the_marks_between_two_clocks() -> None:
    # a server mark after the page's last mark (alignment error): moved back, the sum is the page's E2E
    marks = [W.Mark("server", 12 * MS, "server"), W.Mark("render", 10 * MS, "page")]
    wf = W.build("x", 0, marks, end_ns=10 * MS)
    assert _bounds(wf) == [(0, 10), (10, 10)] and wf.total_ms == 10
    assert "2.000 ms after the last mark" in wf.notes[0]
