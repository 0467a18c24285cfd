"""Peer clients' length control (vLLM's ``min_tokens`` / ``ignore_eos``) is honoured or refused, never
ignored; ``stream_options.continuous_usage_stats`` is honoured; fields testbed does not implement get a
400 that names them."""

from __future__ import annotations

import dataclasses
import json

import httpx
import pytest

from testbed.config import EngineConfig
from testbed.engines.base import GenerationRequest
from testbed.engines.fake.engine import EOS_ID, FakeEngine, NullEngine
from testbed.errors import InputError
from testbed.serve.batcher import BatchConfig
from testbed.serve.run import BackgroundServer


class NoEosControl(FakeEngine):
    """The echo engine, declared unable to mask EOS (as the ONNX Runtime and CTranslate2 engines are)."""

    capabilities = dataclasses.replace(FakeEngine.capabilities, eos_control=False)


@pytest.fixture(scope="module")
def fake():
    return FakeEngine(EngineConfig(engine="fake", max_new_tokens=64)).load()


def ids(engine, text, **kw):
    return engine.stream(GenerationRequest(text=text, **kw)).run().token_ids


def test_engine_min_new_tokens_masks_eos_until_then(fake):
    plain = ids(fake, "a b c")
    assert len(plain) == 4 and plain[-1] == EOS_ID  # three words, then EOS
    got = ids(fake, "a b c", min_new_tokens=7, max_new_tokens=20)
    assert len(got) == 8 and got[-1] == EOS_ID and EOS_ID not in got[:-1]  # 7 tokens, then EOS
    assert ids(fake, "a b c", min_new_tokens=2) == plain  # already longer than the minimum


def test_engine_ignore_eos_runs_to_max_new_tokens(fake):
    got = ids(fake, "a b c", ignore_eos=True, max_new_tokens=11)
    assert len(got) == 11 and EOS_ID not in got
    s = fake.stream(GenerationRequest(text="a b", ignore_eos=True, max_new_tokens=5)).run()
    assert s.finish_reason == "length"
    # the batched path (what the server runs) honours it per row
    prepared = [fake.prepare(GenerationRequest(text=t, **kw)) for t, kw in
                (("a b", {"ignore_eos": True, "max_new_tokens": 6}), ("c d", {}), ("e", {"min_new_tokens": 3}))]
    bs = fake.stream_batch(prepared)
    for _ in bs:
        pass
    assert [len(r.token_ids) for r in bs.rows] == [6, 3, 4]
    assert [r.finish_reason for r in bs.rows] == ["length", "eos", "eos"]


def test_engine_validates_length_control(fake):
    with pytest.raises(InputError, match="min_new_tokens=9"):
        fake.prepare(GenerationRequest(text="a", min_new_tokens=9, max_new_tokens=4))
    other = NoEosControl(EngineConfig(engine="fake")).load()
    with pytest.raises(InputError, match="ignore_eos is not honoured by engine fake"):
        other.prepare(GenerationRequest(text="a", ignore_eos=True))


def test_null_engine_always_runs_to_the_limit():
    null = NullEngine(EngineConfig(engine="null", max_new_tokens=16)).load()
    assert len(ids(null, "a b", ignore_eos=True, max_new_tokens=9)) == 9
    assert len(ids(null, "a b", min_new_tokens=3, max_new_tokens=9)) == 9


@pytest.fixture(scope="module")
def http(fake):
    with BackgroundServer(fake, BatchConfig(max_batch_size=4, max_wait_ms=1)) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c


def stream_events(http, body):
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        lines = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(e) for e in lines[:-1]]


def test_server_honours_ignore_eos_and_min_tokens(http):
    r = http.post("/v1/completions", json={"prompt": "a b c", "max_tokens": 12, "ignore_eos": True}).json()
    assert r["usage"]["completion_tokens"] == 12 and r["choices"][0]["finish_reason"] == "length"
    assert EOS_ID not in r["choices"][0]["token_ids"]
    r = http.post("/v1/completions", json={"prompt": "a b c", "max_tokens": 12, "min_tokens": 6}).json()
    assert r["usage"]["completion_tokens"] == 7 and r["choices"][0]["finish_reason"] == "stop"
    assert r["choices"][0]["token_ids"][-1] == EOS_ID
    events = stream_events(http, {"prompt": "a b c", "max_tokens": 9, "ignore_eos": True})
    assert sum(len(e["choices"][0].get("token_ids") or []) for e in events if e["choices"]) == 9
    assert events[-1]["usage"]["completion_tokens"] == 9


def test_server_continuous_usage_stats_in_every_chunk(http):
    events = stream_events(http, {"prompt": "a b c", "max_tokens": 5, "ignore_eos": True,
                                  "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    token_events = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"] is None]
    assert [e["usage"]["completion_tokens"] for e in token_events] == [1, 2, 3, 4, 5]
    assert all(e["usage"]["prompt_tokens"] == 4 for e in events)
    plain = stream_events(http, {"prompt": "a b c", "max_tokens": 5})
    assert all("usage" not in e for e in plain[:-1])  # only the final chunk without the option


@pytest.mark.parametrize("extra,field", [
    ({"min_tokens": 13, "max_tokens": 12}, "min_tokens=13"),
    ({"min_tokens": -1}, "min_tokens=-1"),
    ({"min_tokens": "4"}, "min_tokens='4'"),
    ({"ignore_eos": "yes"}, "ignore_eos='yes'"),
    ({"stop_token_ids": [5]}, "stop_token_ids=[5]"),
    ({"logprobs": True}, "logprobs=True"),
    ({"frequency_penalty": 0.5}, "frequency_penalty=0.5"),
    ({"repetition_penalty": 1.2}, "repetition_penalty=1.2"),
    ({"echo": True}, "echo=True"),
    ({"best_of": 3}, "best_of=3"),
    ({"stream_options": {"continuous_usage_stats": 1}}, "continuous_usage_stats=1"),
])
def test_server_refuses_what_it_does_not_honour_naming_the_field(http, extra, field):
    r = http.post("/v1/completions", json={"prompt": "a b c", **extra})
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]["message"]
    assert http.get("/health").json()["status"] == "ok"


def test_server_accepts_no_op_defaults(http):
    body = {"prompt": "a b", "stop": None, "stop_token_ids": [], "frequency_penalty": 0, "presence_penalty": 0.0,
            "repetition_penalty": 1.0, "logprobs": None, "echo": False, "best_of": 1, "seed": 0, "top_k": -1,
            "min_tokens": 0, "ignore_eos": False}
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_server_refuses_length_control_on_an_engine_that_cannot_mask_eos():
    eng = NoEosControl(EngineConfig(engine="fake", max_new_tokens=16)).load()
    with BackgroundServer(eng, BatchConfig()) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        for extra, name in (({"ignore_eos": True}, "ignore_eos"), ({"min_tokens": 4}, "min_tokens")):
            r = c.post("/v1/completions", json={"prompt": "a b", **extra})
            assert r.status_code == 400
            err = r.json()["error"]
            assert err["param"] == name and "cannot mask EOS" in err["message"]
        assert c.post("/v1/completions", json={"prompt": "a b"}).status_code == 200
