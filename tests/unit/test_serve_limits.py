"""Issue 15's probes of a hostile or careless client, each against a real server on 127.0.0.1.

One test per row of the issue's table (bodies, headers, slow and idle connections, deep JSON,
lone surrogates, OpenAI fields, cross-origin requests, 5xx hygiene), with model-free engines and
short limits so that every test is bounded in time.  Raw sockets where an HTTP client would hide
what the server does (a body announced but never sent, a header that never ends).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time

import httpx
import pytest

from testbed.config import EngineConfig
from testbed.engines.fake.engine import FakeEngine, NullEngine
from testbed.serve.batcher import BatchConfig
from testbed.serve.limits import Limits
from testbed.serve.run import BackgroundServer

JSON = {"Content-Type": "application/json"}


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def server():
    eng = FakeEngine(EngineConfig(engine="fake", on_overflow="refuse", max_new_tokens=64)).load()
    lim = Limits(head_timeout_s=1.0, body_timeout_s=1.0, max_connections=8)
    with BackgroundServer(eng, BatchConfig(max_batch_size=4, max_wait_ms=1), limits=lim) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def exchange(port: int, chunks: list[bytes], pause: float = 0.0, timeout: float = 8.0) -> tuple[bytes, float]:
    """Send ``chunks`` on a fresh connection (``pause`` s apart), then read until the server closes.

    Returns what was read and the seconds from the first send to the close (``timeout`` when it
    stayed open).  A reset while sending is expected (the server may refuse early).
    """
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(timeout)
    t0 = time.monotonic()
    try:
        for c in chunks:
            s.sendall(c)
            if pause:
                time.sleep(pause)
    except OSError:
        pass
    out = b""
    try:
        while True:
            got = s.recv(65536)
            if not got:
                return out, time.monotonic() - t0
            out += got
    except TimeoutError:
        return out, timeout
    except OSError:
        return out, time.monotonic() - t0
    finally:
        s.close()


def head(port: int, extra: str = "", method: str = "POST", path: str = "/v1/completions") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}".encode()


def status_of(resp: bytes) -> int:
    m = re.match(rb"HTTP/1\.1 (\d{3})", resp)
    assert m, resp[:200]
    return int(m.group(1))


def json_of(resp: bytes) -> dict:
    return json.loads(resp.split(b"\r\n\r\n", 1)[1])


# ---------------------------------------------------------------------------------- memory
def test_a_huge_content_length_is_refused_before_the_body_is_read(server):
    # 400 MB announced, none sent: the answer must come at once, not after reading the body
    resp, closed_after = exchange(server.port, [head(server.port, "Content-Type: application/json\r\n"
                                                                  "Content-Length: 400000000\r\n\r\n")], timeout=5)
    assert status_of(resp) == 413 and closed_after < 5
    err = json_of(resp)["error"]
    assert "400000000 bytes" in err["message"] and "at most 1048576" in err["message"]


def test_a_chunked_body_is_cut_off_at_the_limit(server):
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    # 2 MiB of chunks and no final chunk: the server must answer once it has read past 1 MiB
    resp, closed_after = exchange(server.port, [head(server.port, "Content-Type: application/json\r\n"
                                                                  "Transfer-Encoding: chunked\r\n\r\n")]
                                  + [chunk] * 32, timeout=5)
    assert status_of(resp) == 413 and closed_after < 5
    assert "over 1048576 bytes" in json_of(resp)["error"]["message"]


def test_a_body_over_the_limit_from_a_normal_client_reads_the_413(http):
    # the client sends all 3 MiB before reading: the lingering close lets it read the answer
    r = http.post("/v1/completions", content=b"x" * (3 << 20), headers=JSON)
    assert r.status_code == 413 and "at most 1048576" in r.json()["error"]["message"]
    assert http.get("/health").status_code == 200


def test_an_8_mb_header_value_gets_431(server):
    big = b"X-Big: " + b"a" * (8 << 20) + b"\r\n\r\n"
    resp, _ = exchange(server.port, [head(server.port), big[: 1 << 16], big[1 << 16:]])
    assert status_of(resp) == 431 and "32768 bytes" in json_of(resp)["error"]["message"]


def test_a_hundred_thousand_headers_get_431(server):
    many = b"".join(b"X-%d: y\r\n" % i for i in range(100_000)) + b"\r\n"
    resp, _ = exchange(server.port, [head(server.port), many])
    assert status_of(resp) == 431
    assert "headers" in json_of(resp)["error"]["message"]


def test_more_than_max_headers_small_ones_get_431(server):
    hdrs = b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"Content-Length: 0\r\n\r\n"
    resp, _ = exchange(server.port, [head(server.port), hdrs])
    assert status_of(resp) == 431 and "more than 100 headers" in json_of(resp)["error"]["message"]


# ---------------------------------------------------------------------------------- time
def test_a_connection_that_sends_nothing_is_closed(server, http):
    resp, closed_after = exchange(server.port, [], timeout=8)
    assert closed_after < 8, "an idle connection was never closed"
    assert status_of(resp) == 408
    assert metric(http.get("/metrics").text, 'testbed_connection_events_total{event="head_timeout"}') >= 1


def test_headers_sent_a_byte_at_a_time_are_cut_off_by_the_head_timeout(server):
    slow = [bytes([b]) for b in head(server.port, "Content-Type: application/json\r\n")]  # never finished
    resp, closed_after = exchange(server.port, slow, pause=0.05, timeout=8)
    assert closed_after < 8 and status_of(resp) == 408
    assert "--head-timeout" in json_of(resp)["error"]["message"]


def test_a_body_that_never_arrives_is_cut_off_by_the_body_timeout(server):
    resp, closed_after = exchange(server.port, [head(server.port, "Content-Type: application/json\r\n"
                                                                  "Content-Length: 100\r\n\r\n{\"prompt\":")],
                                  timeout=8)
    assert closed_after < 8 and status_of(resp) == 408
    assert "--body-timeout" in json_of(resp)["error"]["message"]


def test_connections_past_the_cap_get_503_and_the_server_recovers(server, http):
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(12)]
    try:
        time.sleep(0.2)
        with httpx.Client(base_url=server.url, timeout=10) as fresh:
            r = fresh.post("/v1/completions", json={"prompt": "a b"})
        assert r.status_code == 503 and r.headers["connection"] == "close"
        assert "too many open connections" in r.json()["error"]["message"] and "--max-connections" in r.text
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with httpx.Client(base_url=server.url, timeout=10) as fresh:
            ok = fresh.post("/v1/completions", json={"prompt": "a b"})
        if ok.status_code == 200:
            break
        time.sleep(0.1)
    assert ok.status_code == 200
    assert metric(http.get("/metrics").text, 'testbed_rejections_total{reason="connections"}') >= 1


def test_a_connection_flood_past_twice_the_cap_is_closed_at_once(server):
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(24)]
    try:
        for s in socks:
            s.settimeout(0.5)
        closed = 0
        for s in socks[17:]:
            try:
                closed += s.recv(10) == b""
            except (TimeoutError, ConnectionResetError):
                closed += 0
        assert closed >= 1
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------------------------- client errors
@pytest.mark.parametrize("body,needle", [
    ("[" * 100_000, "deeper than 32"),
    ('{"a":' * 5000 + "1" + "}" * 5000, "deeper than 32"),
    ('{"prompt": "hi", "temperature": NaN}', "NaN is not valid JSON"),
    ('{"prompt": "hi", "temperature": 1e999}', "temperature=inf"),
    ('{"prompt": "\\ud800 hello"}', "prompt holds a lone UTF-16 surrogate"),
    (b'{"prompt": "\xff"}', "not UTF-8"),
])
def test_malformed_bodies_get_a_counted_400(http, body, needle):
    before = metric(http.get("/metrics").text, 'testbed_requests_total{endpoint="completions",status="400"}')
    r = http.post("/v1/completions", content=body, headers=JSON)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]
    after = metric(http.get("/metrics").text, 'testbed_requests_total{endpoint="completions",status="400"}')
    assert after == before + 1


def test_a_lone_surrogate_in_chat_content_is_a_400_naming_the_field():
    eng = FakeEngine(EngineConfig(model="fake-chat", engine="fake", max_new_tokens=8)).load()
    assert eng.is_chat
    with BackgroundServer(eng, BatchConfig()) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        body = '{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x\\udc00y"}]}'
        r = c.post("/v1/chat/completions", content=body, headers=JSON)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1].content"
        assert c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}).status_code \
            == 200


@pytest.mark.parametrize("extra,needle", [
    ({"stop": 5}, "stop=5"),
    ({"stop": ["a", ""]}, "stop[1]=''"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
    ({"logprobs": 2}, "logprobs=2"),
    ({"top_logprobs": 3}, "top_logprobs=3"),
    ({"best_of": 2}, "best_of=2"),
    ({"best_of": 1.0}, "best_of=1.0"),
    ({"seed": "abc"}, "seed='abc'"),
    ({"seed": 1.5}, "seed=1.5"),
    ({"n": 1.0}, "n=1.0"),
    ({"n": True}, "n=True"),
    ({"temperature": 0.7}, "decodes greedily"),
    ({"temperature": -1}, "temperature=-1"),
    ({"top_p": 2}, "top_p=2"),
    ({"frobnicate": 1}, "unknown field 'frobnicate'"),
    ({"stream_options": {"include_usage": True, "extra": 1}}, "unknown field stream_options.'extra'"),
])
def test_openai_fields_are_honoured_or_refused_naming_them(http, extra, needle):
    r = http.post("/v1/completions", json={"prompt": "a b", **extra})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


def test_unknown_fields_are_refused_with_the_accepted_list(http):
    r = http.post("/v1/completions", json={"prompt": "a b", "suffix": "x"})
    msg = r.json()["error"]["message"]
    assert r.status_code == 400 and "accepted fields: prompt, model, max_tokens" in msg and "stop" in msg


def test_well_typed_no_effect_fields_are_accepted(http):
    r = http.post("/v1/completions", json={"prompt": "a b", "seed": 7, "n": 1, "best_of": 1, "temperature": 0,
                                           "top_p": 0.9, "top_k": 40, "min_p": 0.0, "user": "u1", "stop": None})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "a b"


def sse_events(c: httpx.Client, body: dict) -> list[dict]:
    out = []
    with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(json.loads(line[6:]))
    return out


@pytest.mark.parametrize("stop", ["d e", ["zzz", "c d"], ["c"]])
def test_stop_strings_end_the_answer_streamed_or_not(http, stop):
    body = {"prompt": "a b c d e f g", "stop": stop}
    plain = http.post("/v1/completions", json=body).json()
    ch = plain["choices"][0]
    expected = "a b c d e f g".split(stop if isinstance(stop, str) else (stop[-1]))[0]
    assert ch["text"] == expected and ch["finish_reason"] == "stop"
    assert plain["usage"]["completion_tokens"] == len(ch["token_ids"]) < 8  # stopped before EOS
    events = sse_events(http, body)
    tokens = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"] is None]
    assert "".join(e["choices"][0]["text"] for e in tokens) == expected
    assert [e["choices"][0]["token_ids"][0] for e in tokens] == ch["token_ids"]
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"
    assert events[-1]["usage"] == plain["usage"]


def test_a_stop_string_that_never_appears_changes_nothing(http):
    plain = http.post("/v1/completions", json={"prompt": "a b c", "stop": ["b c d", "x"]}).json()
    assert plain["choices"][0]["text"] == "a b c" and plain["choices"][0]["finish_reason"] == "stop"
    assert plain["usage"]["completion_tokens"] == 4  # three words and EOS: held tokens were released


class SlowNull(NullEngine):
    def _load(self) -> None:
        super()._load()
        self.made = 0

    def _decode(self, prepared):
        for item in super()._decode(prepared):
            if isinstance(item, int):
                time.sleep(0.004)
                self.made += 1
            yield item

    def _decode_batch(self, prepared):
        for step in super()._decode_batch(prepared):
            if isinstance(step, list):
                time.sleep(0.004)
                self.made += sum(1 for x in step if x is not None)
            yield step


def test_a_stop_string_frees_the_slot():
    eng = SlowNull(EngineConfig(engine="null", max_new_tokens=500)).load()
    with BackgroundServer(eng, BatchConfig(max_batch_size=1)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.post("/v1/completions", json={"prompt": "one two three", "stop": "three"})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "one two "
        deadline = time.monotonic() + 10
        while metric(c.get("/metrics").text, "testbed_running_requests") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert eng.made < 500  # the generation was cancelled, not run to max_tokens
        ok = c.post("/v1/completions", json={"prompt": "a b", "max_tokens": 2})
        assert ok.status_code == 200


# ---------------------------------------------------------------------------------- cross-origin
@pytest.mark.parametrize("headers,status,needle", [
    ({"Content-Type": "text/plain"}, 415, "Content-Type 'text/plain'"),
    ({}, 415, "Content-Type missing"),
    ({"Content-Type": "application/json; charset=latin-1"}, 415, "application/json"),
    ({"Content-Type": "application/json", "Host": "attacker.example"}, 400, "Host 'attacker.example'"),
    ({"Content-Type": "application/json", "Origin": "http://evil.example"}, 403, "--cors-origin"),
])
def test_cross_origin_requests_are_refused(server, headers, status, needle):
    with httpx.Client(base_url=server.url, timeout=10) as c:
        r = c.post("/v1/completions", content=b'{"prompt": "a b"}', headers=headers)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert "access-control-allow-origin" not in r.headers


def test_no_cors_headers_unless_asked_for(http):
    r = http.options("/v1/completions", headers={"Origin": "http://localhost:3000",
                                                  "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    ok = http.post("/v1/completions", json={"prompt": "a b"}, headers={"Origin": "http://localhost:3000"})
    assert ok.status_code == 403


def test_cors_origin_and_allowed_hosts_options():
    eng = FakeEngine(EngineConfig(engine="fake", max_new_tokens=8)).load()
    lim = Limits(cors_origins=("http://localhost:3000",), allowed_hosts=("testbed.internal",))
    with BackgroundServer(eng, BatchConfig(), limits=lim) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        pre = c.options("/v1/completions", headers={"Origin": "http://localhost:3000",
                                                    "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://localhost:3000"
        r = c.post("/v1/completions", json={"prompt": "a b"},
                   headers={"Origin": "http://localhost:3000", "Host": "testbed.internal:8000"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert c.post("/v1/completions", json={"prompt": "a"}, headers={"Host": "other.example"}).status_code == 400


# ---------------------------------------------------------------------------------- 5xx hygiene
class LeakyTokenizer(FakeEngine):
    def encode_input(self, request):  # type: ignore[no-untyped-def]
        raise ValueError("secret internal detail /home/user/.cache")


def test_a_tokenizer_failure_is_a_500_with_an_id_and_no_internal_text(caplog):
    eng = LeakyTokenizer(EngineConfig(engine="fake", max_new_tokens=8)).load()
    with BackgroundServer(eng, BatchConfig()) as srv, httpx.Client(base_url=srv.url, timeout=30) as c, \
            caplog.at_level(logging.ERROR, logger="testbed.serve.protocol"):
        r = c.post("/v1/completions", json={"prompt": "a b"})
        assert r.status_code == 500
        msg = r.json()["error"]["message"]
        assert "secret" not in r.text and "ValueError" not in r.text
        eid = re.search(r"internal error \(id ([0-9a-f]{12})", msg).group(1)
        assert any(eid in rec.getMessage() and "secret internal detail" in rec.getMessage() for rec in caplog.records)
        assert metric(c.get("/metrics").text, 'testbed_requests_total{endpoint="completions",status="500"}') == 1


def test_an_uncaught_exception_is_a_json_500_with_an_id_counted_in_metrics(monkeypatch, caplog):
    import testbed.serve.app as app_mod

    def boom(*a, **k):
        raise RuntimeError("secret stack detail")

    monkeypatch.setattr(app_mod, "parse_body", boom)
    eng = FakeEngine(EngineConfig(engine="fake", max_new_tokens=8)).load()
    with BackgroundServer(eng, BatchConfig()) as srv, httpx.Client(base_url=srv.url, timeout=30) as c, \
            caplog.at_level(logging.ERROR, logger="testbed.serve.protocol"):
        r = c.post("/v1/completions", json={"prompt": "a b"})
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert "secret" not in r.text and "internal error (id" in r.json()["error"]["message"]
        assert any("secret stack detail" in (rec.exc_text or "") or rec.exc_info for rec in caplog.records)
        text = c.get("/metrics").text
        assert metric(text, 'testbed_requests_total{endpoint="completions",status="500"}') == 1
        assert c.get("/health").status_code == 200  # the server stays up


def test_every_response_is_counted(http):
    http.get("/health")
    http.get("/nowhere")
    http.post("/v1/completions", content=b"{}", headers={"Content-Type": "text/plain"})
    text = http.get("/metrics").text
    assert metric(text, 'testbed_requests_total{endpoint="health",status="200"}') >= 1
    assert metric(text, 'testbed_requests_total{endpoint="other",status="404"}') >= 1
    assert metric(text, 'testbed_requests_total{endpoint="completions",status="415"}') >= 1


# ---------------------------------------------------------------------------------- serving limits
def test_max_input_tokens_is_a_serving_limit_below_the_models_context():
    from testbed.cli import _config, build_parser
    from testbed.engines.registry import create_engine
    from testbed.errors import ConfigError
    from testbed.serve.cli import check_max_input, limits_from_args

    args = build_parser().parse_args(["serve", "--engine", "fake", "--max-input-tokens", "8",
                                      "--allowed-hosts", "a.example, b.example", "--head-timeout", "2"])
    eng = create_engine(_config(args))
    check_max_input(eng, args.max_input_tokens)
    lim = limits_from_args(args)
    assert lim.allowed_hosts == ("a.example", "b.example") and lim.head_timeout_s == 2.0
    with pytest.raises(ConfigError, match=r"max_input_tokens=300 .*\[1, 256\]"):
        check_max_input(eng, 300)
    with BackgroundServer(eng, BatchConfig(), limits=lim) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.post("/v1/completions", json={"prompt": "w " * 20})
        assert r.status_code == 400 and "at most 8" in r.json()["error"]["message"]
        assert c.post("/v1/completions", json={"prompt": "w " * 5}).status_code == 200


def test_limits_are_validated():
    from testbed.errors import ConfigError

    with pytest.raises(ConfigError, match="max_body_bytes"):
        Limits(max_body_bytes=0)
    with pytest.raises(ConfigError, match="head_timeout_s"):
        Limits(head_timeout_s=float("nan"))
    with pytest.raises(ConfigError, match="cors_origins"):
        Limits(cors_origins=("evil.example",))
