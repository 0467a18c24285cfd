"""A Hypothesis fuzz of request bodies against a real server (fake engine, 127.0.0.1): never a 5xx.

Bodies are drawn from five families: arbitrary JSON values, any text as the prompt / content,
OpenAI-shaped objects whose fields take arbitrary JSON values (wrong types, NaN-free floats, lone
surrogates, nesting), arrays or objects nested up to 5,000 deep, and arbitrary bytes.  The engine
is the fake one with a tokenizer that, like the real ones, refuses text that is not valid
Unicode.  Every answer must be a 200 or a 4xx with a JSON error naming a message, and the server
must answer ``/health`` afterwards.  Bounded: 200 examples per family, no deadline.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.config import EngineConfig
from testbed.engines.fake.engine import FakeEngine
from testbed.serve.batcher import BatchConfig
from testbed.serve.protocol import accepted_fields
from testbed.serve.run import BackgroundServer

text = st.text(alphabet=st.characters(codec=None), max_size=40)  # lone surrogates included
leaves = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | text
values = st.recursive(leaves, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(text, kids, max_size=4),
                      max_leaves=12)
FIELDS = sorted(set(accepted_fields(True)) | set(accepted_fields(False)) | {"frobnicate"})
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "robot"]),
                                           "content": text | values}), max_size=3)
shaped = st.fixed_dictionaries(
    {"prompt": text | values, "max_tokens": st.integers(-2, 100) | values},
    optional={f: values for f in FIELDS if f not in ("prompt", "max_tokens")}
    | {"messages": messages, "stop": text | st.lists(text, max_size=5)},
)
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class StrictFake(FakeEngine):
    """The fake engine with a tokenizer that, like Hugging Face's Rust tokenizers, takes UTF-8 text only."""

    def encode_input(self, request):  # type: ignore[no-untyped-def]
        for s in [request.text or ""] + [m.get("content") or "" for m in request.messages or ()]:
            s.encode("utf-8")  # a lone surrogate raises here, as in the real tokenizers
        return super().encode_input(request)


@pytest.fixture(scope="module")
def servers():
    eng = StrictFake(EngineConfig(engine="fake", on_overflow="refuse", max_new_tokens=16)).load()
    chat = StrictFake(EngineConfig(model="fake-chat", engine="fake", on_overflow="refuse", max_new_tokens=16)).load()
    with BackgroundServer(eng, BatchConfig(max_batch_size=4, max_wait_ms=1)) as a, \
            BackgroundServer(chat, BatchConfig(max_batch_size=4, max_wait_ms=1)) as b, \
            httpx.Client(base_url=a.url, timeout=30) as ca, httpx.Client(base_url=b.url, timeout=30) as cb:
        yield ca, cb


def check(c: httpx.Client, path: str, raw: bytes) -> None:
    r = c.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code < 500, (r.status_code, raw[:300], r.text[:300])
    if r.status_code >= 400:
        assert isinstance(r.json()["error"]["message"], str)


def dumps(v: object) -> bytes:
    return json.dumps(v, ensure_ascii=True).encode()  # \\udXXX escapes for lone surrogates


@SETTINGS
@given(body=values)
def test_any_json_value(servers, body):
    for c, path in ((servers[0], "/v1/completions"), (servers[1], "/v1/chat/completions")):
        check(c, path, dumps(body))


@SETTINGS
@given(body=shaped, stream=st.booleans())
def test_openai_shaped_bodies(servers, body, stream):
    body = {**body, "stream": stream} if stream else body
    check(servers[0], "/v1/completions", dumps(body))
    check(servers[1], "/v1/chat/completions", dumps(body))


@SETTINGS
@given(prompt=st.text(alphabet=st.characters(codec=None), min_size=1, max_size=40))
def test_any_text_reaching_the_tokenizer(servers, prompt):
    check(servers[0], "/v1/completions", dumps({"prompt": prompt, "max_tokens": 4}))
    check(servers[1], "/v1/chat/completions", dumps({"messages": [{"role": "user", "content": prompt}],
                                                     "max_tokens": 4}))


@SETTINGS
@given(depth=st.integers(1, 5000), kind=st.sampled_from(["[", '{"a":']))
def test_deep_nesting(servers, depth, kind):
    close = "]" if kind == "[" else "}"
    check(servers[0], "/v1/completions", (kind * depth + "1" + close * depth).encode())


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes(servers, raw):
    check(servers[0], "/v1/completions", raw)


def test_the_servers_are_up_after_the_fuzz(servers):
    for c in servers:
        assert c.get("/health").json()["status"] == "ok"
