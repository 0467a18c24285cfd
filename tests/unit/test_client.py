"""The load generator's client: the SSE reader against a vLLM-like server (EOS as an empty chunk),
the lean HTTP client, the event-loop lag probe and the client-limited verdict (scripted, no timing
asserted), several client processes sharing one Poisson stream."""

from __future__ import annotations

import asyncio
import itertools
import json
import socketserver
import threading
import time

import numpy as np
import pytest

from testbed.client import targets as T
from testbed.client.lag import LagProbe
from testbed.client.loadgen import LoadSpec, RunRecords, poisson_offsets_ns, run
from testbed.client.multiproc import split_schedule
from testbed.config import EngineConfig
from testbed.datasets import Example
from testbed.engines.fake.engine import FakeEngine
from testbed.errors import ConfigError, TestbedError
from testbed.metrics import summary as S
from testbed.metrics.records import RequestRecord
from testbed.metrics.saturation import ClientLimits, client_verdict, run_verdict, verdict_text
from testbed.metrics.visible import e2e_visible_ms, visible_stats
from testbed.serve.batcher import BatchConfig
from testbed.serve.run import BackgroundServer

# ----------------------------------------------------------------------------- a vLLM-like server


class VllmLike(socketserver.BaseRequestHandler):
    """Streams three text pieces, then EOS as an *empty* chunk with ``finish_reason`` and no token ids,
    then ``usage`` counting 4 completion tokens (EOS included), as vLLM does."""

    def handle(self) -> None:
        f = self.request.makefile("rb")
        while True:
            length = 0
            while True:
                line = f.readline()
                if not line:
                    return
                if line == b"\r\n":
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            f.read(length)
            events = [{"choices": [{"index": 0, "text": w, "finish_reason": None}]} for w in ("Hallo", " Welt", "!")]
            events.append({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
            events.append({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
            parts = [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]
            out = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"]
            out += [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]
            self.request.sendall(b"".join(out))


@pytest.fixture(scope="module")
def vllm_like():
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), VllmLike)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def send_one(target: T.HttpTarget, text: str = "Hello world!") -> RequestRecord:
    async def main() -> RequestRecord:
        await target.start()
        try:
            rec = RequestRecord(request_id="0", schedule_ns=0, send_ns=0)
            await target.send(Example("0", text), rec)
            return rec
        finally:
            await target.close()

    return asyncio.run(main())


@pytest.mark.parametrize("client", ["aiohttp", "httpx"])
def test_eos_sent_as_an_empty_chunk_tpot_counts_what_was_timed(vllm_like, client, monkeypatch):
    # a clock that moves 1 ms per read: every line gets its own receipt time
    fake = itertools.count(time.perf_counter_ns(), 1_000_000)
    monkeypatch.setattr(T, "now_ns", lambda: next(fake))
    rec = send_one(T.HttpTarget(vllm_like, "m", client=client))
    assert rec.ok and rec.output == "Hallo Welt!" and rec.finish_reason == "stop"
    assert rec.n_out == 4 and rec.chunk_tokens == [1, 1, 1]  # usage counts EOS; no timed chunk carried it
    assert rec.extra["untimed_tokens"] == 1
    span_ms = (rec.chunk_ns[-1] - rec.chunk_ns[0]) / 1e6
    assert span_ms > 0
    # e - f covers the 2 gaps between the 3 timed tokens: divide by 2, not by N - 1 = 3
    assert S.tpot_ms(rec) == pytest.approx(span_ms / 2)
    assert rec.last_visible_ns == rec.chunk_ns[-1]  # the text ended with the last timed chunk


def test_lean_client_reads_the_same_stream(vllm_like):
    rec = send_one(T.HttpTarget(vllm_like, "m", client="lean"))
    assert rec.ok and rec.output == "Hallo Welt!" and rec.n_out == 4 and rec.extra["untimed_tokens"] == 1
    assert S.timed_tokens(rec) == 3


class CutOff(socketserver.BaseRequestHandler):
    """Answers 200 with one SSE event, then closes the connection mid-stream (or stays silent)."""

    silent = False

    def handle(self) -> None:
        self.request.recv(65536)
        if self.silent:
            self.request.recv(1)  # until the client gives up
            return
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        event = b'data: {"choices":[{"index":0,"text":"a","finish_reason":null}]}\n\n'
        self.request.sendall(head + b"%x\r\n%s\r\n" % (len(event), event))


@pytest.mark.parametrize("silent", [False, True])
def test_lean_client_fails_a_cut_or_silent_stream_instead_of_hanging(silent):
    handler = type("H", (CutOff,), {"silent": silent})
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        rec = send_one(T.HttpTarget(f"http://127.0.0.1:{srv.server_address[1]}", "m", client="lean", timeout_s=0.3))
    finally:
        srv.shutdown()
        srv.server_close()
    assert not rec.ok and S.ttft_ms(rec) is None  # counted as failed, never timed
    assert rec.error.startswith("TimeoutError" if silent else "ConnectionError")


class CloseDelimited(socketserver.BaseRequestHandler):
    """An HTTP/1.0-style answer: no Content-Length, no chunking; the body ends when the server closes."""

    def handle(self) -> None:
        self.request.recv(65536)
        events = [b'data: {"choices":[{"index":0,"text":"%s","finish_reason":null}]}\n\n' % w for w in (b"a", b" b")]
        self.request.sendall(b"HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + b"".join(events))


def test_lean_client_reads_a_close_delimited_stream():
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), CloseDelimited)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        rec = send_one(T.HttpTarget(f"http://127.0.0.1:{srv.server_address[1]}", "m", client="lean"))
    finally:
        srv.shutdown()
        srv.server_close()
    assert rec.ok and rec.output == "a b" and rec.n_out == 2
    assert rec.extra["n_out_source"] == "chunks (no usage from the server)"


def test_tpot_divides_by_timed_tokens_scripted_record():
    ms = 1_000_000
    rec = RequestRecord("r", schedule_ns=0, send_ns=0, chunk_ns=[10 * ms, 20 * ms, 30 * ms], chunk_tokens=[1, 1, 1],
                        n_out=4)
    assert S.tpot_ms(rec) == pytest.approx(10.0)  # (30 - 10) / (3 - 1)
    rec.n_out = 3
    assert S.tpot_ms(rec) == pytest.approx(10.0)
    whole = RequestRecord("r", schedule_ns=0, send_ns=0, chunk_ns=[10 * ms, 30 * ms], chunk_tokens=[1, 3], n_out=4)
    assert S.tpot_ms(whole) == pytest.approx(20 / 3)  # METRICS.md: (e - f) / (N - 1) when all N were timed


def test_lean_client_refuses_https_and_counts_http_errors(vllm_like):
    with pytest.raises(TestbedError, match="not an http:// URL"):
        T.HttpTarget("https://example.org", "m", client="lean")
    eng = FakeEngine(EngineConfig(engine="fake", max_new_tokens=8)).load()
    with BackgroundServer(eng, BatchConfig()) as srv:
        rec = send_one(T.HttpTarget(srv.url, "not-this-model", client="lean"))
        assert not rec.ok and rec.error == "status 404 (not found)"
        assert "is not served here" in rec.extra["error_message"]
        ok = send_one(T.HttpTarget(srv.url, "marian-en-de", client="lean"), "a b c")
        # testbed's server streams EOS as an event of its own (token id, empty text)
        assert ok.ok and ok.n_out == 4 == len(ok.chunk_ns) and "untimed_tokens" not in ok.extra
        assert ok.last_visible_ns == ok.chunk_ns[-2] <= ok.chunk_ns[-1]  # (one segment may carry both)
    dead = send_one(T.HttpTarget("http://127.0.0.1:9", "m", client="lean"))  # nothing listens on port 9
    assert not dead.ok and "Error" in dead.error


def test_visible_e2e_ends_at_the_last_text():
    ms = 1_000_000
    rec = RequestRecord("r", schedule_ns=0, send_ns=0, chunk_ns=[5 * ms, 6 * ms, 7 * ms], chunk_tokens=[1, 1, 1],
                        n_out=3, last_visible_ns=6 * ms)
    assert e2e_visible_ms(rec) == pytest.approx(6.0) and S.e2e_ms(rec) == pytest.approx(7.0)
    failed = RequestRecord("f", schedule_ns=0, send_ns=0, ok=False, error="x", last_visible_ns=ms)
    st = visible_stats([rec, failed, RequestRecord("w", 0, 0, [ms], [1], n_out=1, warmup=True, last_visible_ns=ms)])
    assert st["median_e2el_visible_ms"] == pytest.approx(6.0) and st["median_eos_tail_ms"] == pytest.approx(1.0)
    assert visible_stats([failed])["median_e2el_visible_ms"] is None  # n/a, never 0


# ----------------------------------------------------------------------------- lag probe and verdict


class FakeLoop:
    def __init__(self) -> None:
        self.posted: list = []

    def call_soon_threadsafe(self, fn, *args) -> None:
        self.posted.append((fn, args))


def test_lag_probe_measures_post_to_run_with_a_scripted_clock():
    reads = iter([1_000, 1_250_000, 2_000_000, 2_000_500])
    loop = FakeLoop()
    probe = LagProbe(loop, clock=lambda: next(reads))
    probe.tick()  # posted at 1_000 ...
    probe.tick()  # ... and at 1_250_000 (the loop has not run the first yet)
    for fn, args in loop.posted:  # the loop runs them at 2_000_000 and 2_000_500
        fn(*args)
    assert probe.samples_ns == [1_999_000, 750_500]


def test_client_verdict_flags_a_p99_past_its_limit():
    quiet = client_verdict([0.1] * 99 + [0.5], [0.05] * 200, cpu_s=0.5, requests=100)
    assert quiet["client_limited"] is False and quiet["client_limited_reasons"] == []
    assert quiet["client_cpu_ms_per_request"] == pytest.approx(5.0)
    assert verdict_text(quiet).startswith("keeps up")
    late = client_verdict([0.1] * 90 + [3.0] * 10, [0.05] * 200)
    assert late["client_limited"] is True and late["client_limited_reasons"][0].startswith("p99 dispatch delay 3.000")
    laggy = client_verdict([], [0.05] * 90 + [2.0] * 10, ClientLimits(loop_lag_p99_ms=1.5))
    assert laggy["client_limited"] is True and "event-loop lag" in laggy["client_limited_reasons"][0]
    assert laggy["p99_loop_lag_ms"] == pytest.approx(2.0)
    assert "CLIENT-LIMITED" in verdict_text(laggy)
    none = client_verdict([], [])
    assert none["client_limited"] is None and none["p99_loop_lag_ms"] is None  # undecided, never "fine"
    with pytest.raises(ConfigError, match="client_limit.dispatch_p99_ms"):
        ClientLimits(dispatch_p99_ms=0)


def test_run_verdict_counts_dispatch_delay_only_in_the_server_scenario():
    ms = 1_000_000
    recs = RunRecords([RequestRecord(str(i), schedule_ns=0, send_ns=5 * ms, chunk_ns=[6 * ms], chunk_tokens=[1],
                                     n_out=1) for i in range(10)], loop_lag_ns=[10_000] * 10, client_cpu_s=0.02)
    assert run_verdict(recs, "server")["client_limited"] is True  # a_i - s_i = 5 ms
    closed = run_verdict(recs, "concurrency")  # there s_i is taken at the send: not a client signal
    assert closed["client_limited"] is False and closed["client_cpu_ms_per_request"] == pytest.approx(2.0)


# ----------------------------------------------------------------------------- several client processes


def test_split_schedule_thins_one_poisson_stream():
    offsets = poisson_offsets_ns(500.0, seed=3, n=6000)
    shares = split_schedule(offsets, 3, seed=3)
    assert shares == split_schedule(offsets, 3, seed=3)  # seeded
    merged = sorted(p for s in shares for p in s)
    assert merged == list(enumerate(offsets))  # every arrival once, at its own offset
    for s in shares:
        assert [o for _, o in s] == sorted(o for _, o in s)
        gaps = np.diff([o for _, o in s]) / 1e9
        # each share is Poisson at R / k: exponential gaps, mean k / R, coefficient of variation 1
        assert gaps.mean() == pytest.approx(3 / 500, rel=0.06)
        assert gaps.std() / gaps.mean() == pytest.approx(1, abs=0.06)


def test_two_client_processes_share_the_schedule_and_merge_records():
    eng = FakeEngine(EngineConfig(engine="fake", max_new_tokens=8)).load()
    examples = [Example(str(i), f"w{i} a b") for i in range(40)]
    spec = LoadSpec("server", rate=300, num_requests=40, warmup=3, seed=4, client_procs=2)
    with BackgroundServer(eng, BatchConfig(max_batch_size=4, max_wait_ms=1)) as srv:
        recs = run(T.HttpTarget(srv.url, "marian-en-de"), examples, spec)
    assert recs.client_procs == 2 and recs.client_cpu_s is not None and recs.client_cpu_s > 0
    assert [r.warmup for r in recs] == [True] * 3 + [False] * 40
    live = recs[3:]
    assert all(S.is_completed(r) for r in live)
    assert sorted(r.request_id for r in live) == sorted(f"{k}:{k}" for k in range(40))
    assert [r.schedule_ns for r in live] == sorted(r.schedule_ns for r in live)
    s0 = min(r.schedule_ns for r in live)
    offsets = poisson_offsets_ns(300, 4, n=40)
    by_k = {int(r.request_id.split(":")[0]): r for r in live}
    assert [by_k[k].schedule_ns - s0 for k in range(40)] == [o - offsets[0] for o in offsets]
    assert all(by_k[k].output == f"w{k} a b" for k in range(40))


def test_client_procs_is_validated():
    with pytest.raises(ConfigError, match="client_procs"):
        LoadSpec("server", rate=1, client_procs=0)
    assert LoadSpec("concurrency", client_procs=4).procs == 1  # other scenarios run in one process


@pytest.mark.parametrize("limit,flag,needle", [("1e-6", True, "CLIENT-LIMITED: p99 dispatch delay"),
                                               ("1e6", False, "keeps up")])
def test_client_limited_flag_shows_in_the_bench_summary(tmp_path, capsys, limit, flag, needle):
    from testbed.cli import main

    eng = FakeEngine(EngineConfig(engine="fake", max_new_tokens=8)).load()
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"text": f"s{i} a b"}) + "\n" for i in range(20)))
    with BackgroundServer(eng, BatchConfig(max_batch_size=4, max_wait_ms=1)) as srv:
        rc = main(["bench", "--url", srv.url, "--scenario", "server", "--rate", "200", "--dataset", str(data),
                   "--num-requests", "20", "--warmup", "1", "--no-progress", "--client-limit-ms", limit,
                   "--out", str(tmp_path / "run")])
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["summary"]
    assert summary["client_limited"] is flag and summary["client_procs"] == 1
    assert summary["client_cpu_ms_per_request"] > 0 and summary["median_e2el_visible_ms"] is not None
    assert needle in capsys.readouterr().out and needle in (tmp_path / "run" / "summary.md").read_text()


def test_requests_go_out_from_the_timer_thread_on_idle_connections():
    eng = FakeEngine(EngineConfig(engine="fake", max_new_tokens=8)).load()
    examples = [Example(str(i), f"w{i} a b") for i in range(30)]
    sent_from_thread: list[bool] = []
    with BackgroundServer(eng, BatchConfig(max_batch_size=4, max_wait_ms=1)) as srv:
        target = T.HttpTarget(srv.url, "marian-en-de")
        original = target.send_from_thread

        def counting(ex, rec, done):
            sent_from_thread.append(original(ex, rec, done))
            return sent_from_thread[-1]

        target.send_from_thread = counting
        recs = run(target, examples, LoadSpec("server", rate=200, num_requests=30, warmup=2, seed=2))
    live = [r for r in recs if not r.warmup]
    assert len(sent_from_thread) == 30 and sent_from_thread[0]  # after the warm-up a connection is idle
    assert all(S.is_completed(r) and r.schedule_ns <= r.send_ns <= r.chunk_ns[0] for r in live)
    assert sorted(r.output for r in live) == sorted(f"w{i} a b" for i in range(30))
