"""A long chat prompt cannot stall the server: chunked prefill under continuous batching (issue probe:
a 7,831-token prompt used to hold a short request for its whole 34 s prefill)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from testbed.config import EngineConfig
from testbed.engines.base import GenerationRequest
from testbed.engines.registry import create_engine
from testbed.serve.batcher import BatchConfig
from testbed.serve.run import BackgroundServer

pytestmark = pytest.mark.slow

LONG = " ".join(["Summarise these notes on the history of the printing press in Europe."] * 90)  # ~1.4k tokens


@pytest.fixture(scope="module")
def chat():
    eng = create_engine(EngineConfig(engine="onnxruntime", model="smollm2-135m-instruct", threads=1,
                                     max_new_tokens=16, on_overflow="refuse"))
    yield eng
    eng.close()


def _post(url: str, text: str, out: dict, key: str) -> None:
    with httpx.Client(base_url=url, timeout=120) as c:
        out[key] = c.post("/v1/completions", json={"model": "smollm2-135m-instruct", "prompt": text,
                                                   "max_tokens": 4, "return_timing": True}).json()


def test_a_short_request_sent_during_a_long_prefill_finishes_before_the_long_ones_first_token(chat):
    # small chunks: even a fast CPU spends seconds on this prefill, so the short request arrives during it
    cfg = BatchConfig(max_batch_size=4, max_wait_ms=0, batching="continuous", prefill_chunk=16)
    with BackgroundServer(chat, cfg) as srv:
        out: dict = {}
        t = threading.Thread(target=_post, args=(srv.url, LONG, out, "long"))
        t.start()
        with httpx.Client(base_url=srv.url, timeout=30) as c:  # wait until the long prompt is being prefilled
            deadline = time.monotonic() + 60
            while c.get("/health").json()["running"] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
        _post(srv.url, "Hi!", out, "short")
        t.join(120)
    long_t, short_t = out["long"]["timing"], out["short"]["timing"]
    assert out["long"]["usage"]["prompt_tokens"] > 1000
    assert short_t["token_ns"][-1] < long_t["token_ns"][0]  # done before the long prompt's first token


def test_a_client_that_disconnects_stops_its_prefill(chat):
    cfg = BatchConfig(max_batch_size=4, max_wait_ms=0, batching="continuous", prefill_chunk=16)
    with BackgroundServer(chat, cfg) as srv:
        with httpx.Client(base_url=srv.url, timeout=5) as c:
            try:
                c.post("/v1/completions", json={"model": "smollm2-135m-instruct", "prompt": LONG, "max_tokens": 4},
                       timeout=0.5)
            except httpx.TimeoutException:
                pass  # the client went away during the prefill
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                h = c.get("/health").json()
                if h["running"] == 0 and h["queue_depth"] == 0:
                    break
                time.sleep(0.05)
            metrics = c.get("/metrics").text
        cancelled = int(next(ln.split()[1] for ln in metrics.splitlines()
                             if ln.startswith("testbed_requests_cancelled_total")))
        assert h["running"] == 0 and cancelled == 1
        computed = int(next(ln.split()[1] for ln in metrics.splitlines() if ln.startswith("testbed_positions_total")))
        n_prompt = len(chat.prepare(GenerationRequest(text=LONG)).input_ids)
        assert 0 < computed < n_prompt  # its prefill stopped part-way: not every prompt position was computed
