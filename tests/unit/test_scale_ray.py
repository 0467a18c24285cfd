"""Ray Serve replicas (`testbed serve --backend ray`): the same tokens as `testbed serve`, per-replica
/health, 429 from a replica's own queue; option checks.  Skipped, with the reason, without the extra."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from testbed.config import EngineConfig
from testbed.errors import ConfigError
from testbed.scale.ray_serve import RaySpec
from testbed.serve.batcher import BatchConfig

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="the scale extra is not installed (pip install 'testbed[scale]')")


def test_spec_options_fixed_and_autoscaling():
    b = BatchConfig(max_batch_size=4, max_queue=8)
    fixed = RaySpec(replicas=2).deployment_options(1, b)
    assert fixed == {"ray_actor_options": {"num_cpus": 1}, "max_ongoing_requests": 24, "num_replicas": 2}
    auto = RaySpec(min_replicas=1, max_replicas=3, target_ongoing_requests=2).deployment_options(2, b)
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2}
    assert "num_replicas" not in auto and auto["ray_actor_options"] == {"num_cpus": 2}
    with pytest.raises(ConfigError, match="replicas"):
        RaySpec(replicas=0)
    with pytest.raises(ConfigError, match="min_replicas"):
        RaySpec(min_replicas=1)
    with pytest.raises(ConfigError, match="min_replicas"):
        RaySpec(min_replicas=3, max_replicas=2)


PIN_PROBE = """
import json, os, sys, threading
from testbed.scale.ray_serve import pin, thread_ids
go = threading.Event()
before = threading.Thread(target=go.wait)  # a thread started before pinning (Ray's, in a replica)
before.start()
cores = pin(1, 1, sys.argv[1])
after = threading.Thread(target=go.wait)  # one started after (the engine's)
after.start()
aff = {"caller": sorted(os.sched_getaffinity(0)), "before": sorted(os.sched_getaffinity(before.native_id)),
       "after": sorted(os.sched_getaffinity(after.native_id)),
       "all": sorted({tuple(sorted(os.sched_getaffinity(t))) for t in thread_ids()})}
go.set()
print(json.dumps({"cores": cores, **aff}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux thread affinity and 2 cores")
def test_pin_engine_binds_the_caller_and_its_new_threads_process_binds_every_thread():
    def probe(mode: str) -> dict[str, list[int]]:
        out = subprocess.run([sys.executable, "-c", PIN_PROBE, mode], capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    everyone = sorted(os.sched_getaffinity(0))
    core = [everyone[1]]  # rank 1, 1 thread: the second core
    engine = probe("engine")
    assert engine["cores"] == engine["caller"] == engine["after"] == core
    assert engine["before"] == everyone  # Linux affinity is per thread: Ray's earlier threads stay free
    proc = probe("process")
    assert proc["cores"] == proc["caller"] == proc["before"] == proc["after"] == core
    assert proc["all"] == [core]
    none = probe("none")
    assert none["cores"] is None and none["caller"] == none["before"] == everyone
    with pytest.raises(ConfigError, match="pin"):
        RaySpec(pin="all")


def _stream(url: str, prompt: str) -> tuple[list[int], str]:
    import httpx

    body = {"model": "marian-en-de", "prompt": prompt, "stream": True, "max_tokens": 12,
            "stream_options": {"include_usage": True}}
    ids, text = [], ""
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                c = json.loads(line[6:]).get("choices") or [{}]
                ids += c[0].get("token_ids") or []
                text += c[0].get("text") or ""
    return ids, text


@needs_ray
def test_streaming_through_ray_serve_returns_the_same_tokens_as_testbed_serve():
    import httpx

    from testbed.engines.registry import create_engine
    from testbed.scale.ray_serve import deploy, shutdown
    from testbed.serve.run import BackgroundServer, free_port, warm_up

    cfg = EngineConfig(engine="fake", max_new_tokens=12, threads=1)
    batch = BatchConfig(max_batch_size=2, max_queue=4)
    # one request: the fake engine numbers words as it meets them, so a replica's later answers
    # depend on what it served before (and Ray picks the replica)
    prompts = ["one two three four"]
    engine = create_engine(cfg).load()
    warm_up(engine)  # as `testbed serve` and each replica do (the fake engine numbers words as it meets them)
    with BackgroundServer(engine, batch) as srv:
        want = [_stream(srv.url, p) for p in prompts]
    port = free_port()
    try:
        deploy(cfg, batch, RaySpec(replicas=2, port=port))
        url = f"http://127.0.0.1:{port}"
        got = [_stream(url, p) for p in prompts]
        health = [httpx.get(url + "/health", timeout=30).json() for _ in range(12)]
        metrics = httpx.get(url + "/metrics", timeout=30).text
    finally:
        shutdown()
    assert got == want and all(ids for ids, _ in got)
    assert all(h["status"] == "ok" and h["replica"] for h in health)
    assert all("nice 0)" in h["replica"] for h in health)  # not Ray's default worker niceness 15
    assert metrics.startswith("# testbed replica ")


@needs_ray
def test_a_full_replica_queue_answers_429_through_ray_serve():
    """One replica, one running + one queued request at most: of 16 requests sent at once, the surplus is refused
    by the replica's own queue (429 + Retry-After, counted in its /metrics), not queued by Ray's proxy."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from testbed.scale.ray_serve import deploy, shutdown
    from testbed.serve.run import free_port

    cfg = EngineConfig(engine="null", max_new_tokens=2000, threads=1)
    batch = BatchConfig(max_batch_size=1, max_queue=1, retry_after_s=3)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    body = {"model": "marian-en-de", "prompt": "a b c", "max_tokens": 2000}

    def post(_: int) -> httpx.Response:
        return httpx.post(url + "/v1/completions", json=body, timeout=120)

    try:
        deploy(cfg, batch, RaySpec(replicas=1, port=port))
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(post, range(16)))
        metrics = httpx.get(url + "/metrics", timeout=30).text
    finally:
        shutdown()
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    assert len(ok) + len(refused) == 16 and ok and refused
    assert all(r.json()["usage"]["completion_tokens"] == 2000 for r in ok)
    assert all(r.headers["retry-after"] == "3" for r in refused)
    line = next(ln for ln in metrics.splitlines() if ln.startswith('testbed_rejections_total{reason="queue_full"}'))
    assert float(line.split()[-1]) == len(refused)  # the replica refused them itself
