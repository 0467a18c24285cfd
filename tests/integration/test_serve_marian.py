"""The server on the embedded Marian model: batched serving gives the same translations as the engine."""

from __future__ import annotations

import json

import httpx
import pytest

from testbed.client.loadgen import LoadSpec, run
from testbed.client.targets import HttpTarget
from testbed.config import EngineConfig
from testbed.datasets import load_dataset
from testbed.engines.registry import create_engine
from testbed.metrics import summary as S
from testbed.serve.batcher import BatchConfig
from testbed.serve.run import BackgroundServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def marian():
    eng = create_engine(EngineConfig(model="marian-en-de", threads=1, on_overflow="refuse"))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def sentences():
    return load_dataset("test", limit=8)


def test_torch_batch_stream_equals_single_streams(marian, sentences):
    prepared = [marian.prepare(marian.stream(ex.text).request) for ex in sentences[:6]]
    bs = marian.stream_batch(prepared)
    for _ in bs:
        pass
    singles = [marian.stream(ex.text).run() for ex in sentences[:6]]
    assert [r.token_ids for r in bs.rows] == [s.token_ids for s in singles]
    assert [r.text for r in bs.rows] == [s.text for s in singles]
    assert all(r.encoder_done_ns is not None and r.finish_reason == "eos" for r in bs.rows)


def test_served_batched_translations_equal_the_engine(marian, sentences):
    expected = [marian.stream(ex.text).run().text for ex in sentences]
    with BackgroundServer(marian, BatchConfig(max_batch_size=4, max_wait_ms=20)) as srv:
        recs = run(HttpTarget(srv.url, "marian-en-de", return_timing=True), sentences,
                   LoadSpec("offline", num_requests=len(sentences), warmup=0))
        assert [r.output for r in recs] == expected
        assert all(S.is_completed(r) and r.n_out == len(r.extra["server_timing"]["token_ns"]) for r in recs)
        assert max(r.extra["server_timing"]["batch_size"] for r in recs) > 1
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            body = {"model": "marian-en-de", "prompt": sentences[0].text}
            plain = c.post("/v1/completions", json=body).json()
            assert plain["choices"][0]["text"] == expected[0]
            events = []
            with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                events = [json.loads(line[6:]) for line in r.iter_lines()
                          if line.startswith("data: ") and line != "data: [DONE]"]
            ids = [e["choices"][0]["token_ids"][0] for e in events if e["choices"] and "token_ids" in e["choices"][0]]
            assert ids == plain["choices"][0]["token_ids"]
            assert events[-1]["usage"]["completion_tokens"] == len(ids)
            long = c.post("/v1/completions", json={"prompt": "word " * 400})
            assert long.status_code == 400 and "at most 256" in long.json()["error"]["message"]


def test_torch_honours_ignore_eos_and_min_tokens(marian, sentences):
    from testbed.engines.base import GenerationRequest

    text = sentences[1].text
    eos = marian.eos_token_ids
    plain = marian.stream(GenerationRequest(text=text, max_new_tokens=60)).run()
    assert plain.finish_reason == "eos" and len(plain.token_ids) < 40
    forced = marian.stream(GenerationRequest(text=text, max_new_tokens=40, ignore_eos=True)).run()
    assert len(forced.token_ids) == 40 and not eos & set(forced.token_ids) and forced.finish_reason == "length"
    # greedy is unchanged until the step where EOS would have been chosen
    n = len(plain.token_ids)
    assert forced.token_ids[: n - 1] == plain.token_ids[: n - 1]
    m = n + 4
    longer = marian.stream(GenerationRequest(text=text, max_new_tokens=60, min_new_tokens=m)).run()
    assert len(longer.token_ids) > m and not eos & set(longer.token_ids[:m])
    assert longer.token_ids[: n - 1] == plain.token_ids[: n - 1]
    # the batched path (the server's) masks per row
    prepared = [marian.prepare(GenerationRequest(text=text, max_new_tokens=40, ignore_eos=True)),
                marian.prepare(GenerationRequest(text=text, max_new_tokens=60))]
    bs = marian.stream_batch(prepared)
    for _ in bs:
        pass
    assert [r.token_ids for r in bs.rows] == [forced.token_ids, plain.token_ids]
    with BackgroundServer(marian, BatchConfig(max_batch_size=2, max_wait_ms=1)) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.post("/v1/completions", json={"prompt": text, "max_tokens": 40, "ignore_eos": True}).json()
        assert r["usage"]["completion_tokens"] == 40 and r["choices"][0]["token_ids"] == forced.token_ids


@pytest.mark.gpu
def test_cuda_batched_serving_equals_single_streams(sentences):
    eng = create_engine(EngineConfig(model="marian-en-de", device="cuda", precision="fp32", on_overflow="refuse"))
    try:
        singles = [eng.stream(ex.text).run().text for ex in sentences]
        with BackgroundServer(eng, BatchConfig(max_batch_size=8, max_wait_ms=20)) as srv:
            recs = run(HttpTarget(srv.url, "marian-en-de", return_timing=True), sentences,
                       LoadSpec("offline", num_requests=len(sentences), warmup=0))
        # padded GPU kernels may flip a near-tie argmax: allow one differing sentence of eight
        assert sum(r.output == s for r, s in zip(recs, singles)) >= len(singles) - 1
        assert all(S.is_completed(r) for r in recs)
        assert max(r.extra["server_timing"]["batch_size"] for r in recs) > 1
    finally:
        eng.close()


@pytest.mark.parametrize("engine_name", ["torch", "onnxruntime"])
def test_continuous_serving_gives_every_request_its_single_stream_translation(engine_name, sentences):
    """Poisson arrivals into a continuous-batching server: rows join mid-batch, outputs unchanged."""
    eng = create_engine(EngineConfig(engine=engine_name, model="marian-en-de", threads=1, on_overflow="refuse"))
    try:
        exs = load_dataset("test", limit=16)
        expected = [eng.stream(ex.text).run().text for ex in exs]
        with BackgroundServer(eng, BatchConfig(max_batch_size=8, max_wait_ms=0, batching="continuous")) as srv:
            recs = run(HttpTarget(srv.url, "marian-en-de", return_timing=True), exs,
                       LoadSpec("server", rate=60.0, num_requests=len(exs), warmup=0, seed=3))
            assert all(r.ok for r in recs)
            by_k = {int(r.request_id.split(":")[0]): r for r in recs}
            assert [by_k[k].output for k in range(len(exs))] == expected
            timings = [r.extra["server_timing"] for r in recs]
            assert all(t["batching"] == "continuous" for t in timings)
            assert any(t["join_step"] > 0 for t in timings)  # some request joined a batch already decoding
            metrics = httpx.get(f"{srv.url}/metrics").text
            assert "testbed_continuous_batching 1" in metrics
            joins = int(next(ln.split()[1] for ln in metrics.splitlines()
                             if ln.startswith("testbed_batch_joins_total")))
            assert joins > 0
    finally:
        eng.close()
