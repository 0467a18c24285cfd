"""The HTTP server on a real socket (127.0.0.1, a free port) with model-free engines.

Validation errors, streaming vs non-streaming, usage from token ids, engine-side timings,
overload (429 + Retry-After, counted by the client), disconnects that free the slot, deadlines.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from testbed.client.loadgen import LoadSpec, run
from testbed.client.targets import HttpTarget, is_rejection
from testbed.config import EngineConfig
from testbed.datasets import Example
from testbed.engines.fake.engine import FakeEngine, NullEngine
from testbed.metrics import summary as S
from testbed.serve.batcher import BatchConfig
from testbed.serve.run import BackgroundServer


class SlowNull(NullEngine):
    """A null engine that takes ``delay`` seconds per token and counts the tokens it made."""

    delay = 0.004

    def _load(self) -> None:
        super()._load()
        self.made = 0

    def _decode(self, prepared):
        for item in super()._decode(prepared):
            if isinstance(item, int):
                time.sleep(self.delay)
                self.made += 1
            yield item


@pytest.fixture(scope="module")
def server():
    eng = FakeEngine(EngineConfig(engine="fake", on_overflow="refuse", max_new_tokens=64)).load()
    with BackgroundServer(eng, BatchConfig(max_batch_size=4, max_wait_ms=1)) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


BAD = [
    ("{not json", 400, "not valid JSON"),
    ("[1, 2]", 400, "JSON object"),
    ('{"prompt": ""}', 400, "empty prompt"),
    ('{"prompt": "   "}', 400, "empty prompt"),
    ('{"prompt": 42}', 400, "prompt=42"),
    ('{"prompt": ["a", "b"]}', 400, "prompt="),
    ('{"prompt": "' + "word " * 400 + '"}', 400, "at most 256"),
    ('{"prompt": "hi", "max_tokens": -3}', 400, "max_tokens=-3"),
    ('{"prompt": "hi", "max_tokens": 0}', 400, "max_tokens=0"),
    ('{"prompt": "hi", "max_tokens": 1000000000}', 400, "[1, 64]"),
    ('{"prompt": "hi", "max_tokens": "10"}', 400, "max_tokens='10'"),
    ('{"prompt": "hi", "max_tokens": true}', 400, "max_tokens=True"),
    ('{"prompt": "hi", "stream": "yes"}', 400, "stream='yes'"),
    ('{"prompt": "hi", "n": 3}', 400, "n=3"),
    ('{"prompt": "hi", "temperature": "hot"}', 400, "temperature"),
    ('{"prompt": "hi", "model": "gpt-9"}', 404, "'gpt-9' is not served"),
    ('{"prompt": "hi", "model": 7}', 400, "model=7"),
]


@pytest.mark.parametrize("body,status,needle", BAD)
def test_bad_requests_get_json_errors_and_the_server_stays_up(http, body, status, needle):
    r = http.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"], err
    assert http.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("body,needle", [
    ({"messages": []}, "messages=[]"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "translation model"),
])
def test_chat_endpoint_validates_too(http, body, needle):
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and needle in r.json()["error"]["message"]


def sse(http, body, path="/v1/completions"):
    events = []
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_streaming_equals_non_streaming_and_usage_counts_token_ids(http):
    body = {"model": "marian-en-de", "prompt": "the quick brown fox jumps", "max_tokens": 64}
    plain = http.post("/v1/completions", json=body).json()
    events = sse(http, body)
    tokens = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"] is None]
    assert all(len(e["choices"][0]["token_ids"]) == 1 for e in tokens)  # one event per token
    streamed_text = "".join(e["choices"][0]["text"] for e in tokens)
    streamed_ids = [e["choices"][0]["token_ids"][0] for e in tokens]
    assert streamed_text == plain["choices"][0]["text"] == "the quick brown fox jumps"
    assert streamed_ids == plain["choices"][0]["token_ids"]
    usage = events[-1]["usage"]
    assert usage == plain["usage"]
    assert usage["completion_tokens"] == len(streamed_ids) == 6  # five words and EOS
    assert usage["prompt_tokens"] == 6
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"


def test_max_tokens_cuts_with_finish_reason_length(http):
    r = http.post("/v1/completions", json={"prompt": "a b c d e f", "max_tokens": 2}).json()
    assert r["usage"]["completion_tokens"] == 2 and r["choices"][0]["finish_reason"] == "length"


def test_timing_is_returned_on_request(http):
    r = http.post("/v1/completions", json={"prompt": "one two three", "return_timing": True}).json()
    t = r["timing"]
    assert len(t["token_ns"]) == r["usage"]["completion_tokens"]
    assert (t["arrival_ns"] <= t["batch_start_ns"] <= t["decode_start_ns"] <= t["encoder_done_ns"]
            <= t["token_ns"][0] <= t["end_ns"])
    assert "timing" not in http.post("/v1/completions", json={"prompt": "one"}).json()


def test_health_models_and_metrics(http):
    assert http.get("/v1/models").json()["data"][0]["id"] == "marian-en-de"
    text = http.get("/metrics").text
    assert "# TYPE testbed_ttft_seconds histogram" in text
    assert metric(text, "testbed_queue_depth") == 0
    assert 'testbed_requests_total{endpoint="completions",status="200"}' in text


def test_client_records_against_the_server(server):
    examples = [Example(str(i), f"w{i} x y z") for i in range(20)]
    recs = run(HttpTarget(server.url, "marian-en-de", max_tokens=3), examples,
               LoadSpec("concurrency", concurrency=4, warmup=2))
    live = [r for r in recs if not r.warmup]
    assert len(live) == 20 and all(r.ok for r in live)
    assert all(r.n_out == 3 == sum(r.chunk_tokens) == len(r.chunk_ns) for r in live)
    assert all(r.schedule_ns <= r.send_ns <= r.chunk_ns[0] <= r.done_ns for r in live)
    assert sorted(r.output for r in live) == sorted(f"w{i} x y" for i in range(20))


def test_overload_rejects_at_once_with_retry_after_and_the_client_counts_it():
    eng = SlowNull(EngineConfig(engine="null", max_new_tokens=4)).load()
    # capacity: one request at a time, 4 tokens x 4 ms = ~16 ms each, i.e. ~60 req/s at most;
    # offered: 2x that as Poisson arrivals, with 3 places in the queue
    with BackgroundServer(eng, BatchConfig(max_batch_size=1, max_queue=3, retry_after_s=2)) as srv:
        examples = [Example(str(i), "a b c") for i in range(120)]
        recs = run(HttpTarget(srv.url, "marian-en-de"), examples, LoadSpec("server", rate=120, seed=1, warmup=1))
        live = [r for r in recs if not r.warmup]
        done = [r for r in live if r.ok]
        rejected = [r for r in live if not r.ok]
        assert len(live) == 120 and done and rejected
        assert all(is_rejection(r.error) and r.error.startswith("status 429") for r in rejected)
        assert all(r.extra["retry_after"] == "2" for r in rejected)
        assert all(r.n_out == 4 and S.is_completed(r) for r in done)  # admitted ones complete
        summ = S.summarize(recs)
        assert summ.failed == len(rejected) and summ.completed == len(done)
        assert summ.errors == {"status 429 (rejected: queue full)": len(rejected)}
        assert all(S.ttft_ms(r) is None for r in rejected)  # never a 0 ms sample
        # refusals are immediate: far quicker than serving a request
        assert max((r.done_ns - r.send_ns) for r in rejected) < min(r.done_ns - r.send_ns for r in done) * 50
        with httpx.Client(base_url=srv.url) as c:
            assert c.get("/health").json()["queue_depth"] == 0
            assert metric(c.get("/metrics").text, 'testbed_rejections_total{reason="queue_full"}') == len(rejected)


def test_disconnect_mid_stream_cancels_generation_and_frees_the_slot():
    eng = SlowNull(EngineConfig(engine="null", max_new_tokens=500)).load()
    with BackgroundServer(eng, BatchConfig(max_batch_size=1, max_queue=1)) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json={"prompt": "go on", "stream": True}) as r:
            assert r.status_code == 200
            n = 0
            for line in r.iter_lines():
                n += line.startswith("data: ")
                if n == 3:
                    break
        # the stream is closed; the server notices, cancels the generation, the slot frees up
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = c.get("/metrics").text
            if metric(text, "testbed_requests_cancelled_total") == 1 and metric(text, "testbed_running_requests") == 0:
                break
            time.sleep(0.02)
        assert metric(text, "testbed_requests_cancelled_total") == 1
        assert metric(text, "testbed_running_requests") == 0
        assert eng.made < 500
        # the freed slot serves the next request
        ok = c.post("/v1/completions", json={"prompt": "a b", "max_tokens": 2})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


def test_deadline_ends_a_request_with_504():
    eng = SlowNull(EngineConfig(engine="null", max_new_tokens=400)).load()
    with BackgroundServer(eng, BatchConfig(timeout_s=0.1)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.post("/v1/completions", json={"prompt": "slow one"})
        assert r.status_code == 504 and "deadline exceeded" in r.json()["error"]["message"]
        assert eng.made < 400
        events = sse(c, {"prompt": "slow one"})
        assert "deadline exceeded" in events[-1]["error"]["message"]


def test_dynamic_batching_forms_batches():
    eng = SlowNull(EngineConfig(engine="null", max_new_tokens=4)).load()
    with BackgroundServer(eng, BatchConfig(max_batch_size=8, max_wait_ms=50)) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            outs: list[dict] = []
            threads = [threading.Thread(target=lambda i=i: outs.append(
                c.post("/v1/completions", json={"prompt": f"r{i} x", "return_timing": True}).json()))
                for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(outs) == 8 and all(o["usage"]["completion_tokens"] == 4 for o in outs)
            assert max(o["timing"]["batch_size"] for o in outs) > 1
            assert metric(c.get("/metrics").text, "testbed_batches_total") < 8


def test_cli_bench_url_server_scenario(server, tmp_path, capsys):
    from testbed.cli import main

    data = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"text": f"s{i} a b c d e", "reference": f"s{i} a b c d e"}) for i in range(30)]
    data.write_text("\n".join(lines) + "\n")
    rc = main(["bench", "--url", server.url, "--scenario", "server", "--rate", "200", "--dataset", str(data),
               "--num-requests", "30", "--warmup", "2", "--seed", "5", "--out", str(tmp_path / "run"),
               "--no-progress", "--return-timing"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| completed / failed (rejected) | 30 / 0 (0) |" in out and "200 (seed 5)" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["accuracy"]["bleu"] == pytest.approx(100.0)  # the echo engine returns the source
    assert summary["signature"]["target"] == f"http {server.url}"
    rec = json.loads((tmp_path / "run" / "records.jsonl").read_text().splitlines()[-1])
    assert rec["n_out"] == len(rec["extra"]["server_timing"]["token_ns"]) == 7


def test_serve_command_is_registered():
    from testbed.cli import build_parser

    args = build_parser().parse_args(["serve", "--engine", "null", "--port", "0", "--max-batch-size", "4"])
    assert args.func.__name__ == "cmd_serve" and args.on_overflow == "refuse" and args.host == "127.0.0.1"
