"""Locust workers (`testbed bench --workers N`): shares, merged report, a dead worker, the missing extra.

The end-to-end tests start a Locust master and workers on 127.0.0.1 against a null-engine server
(a few seconds each); they are skipped, with the reason, when the `scale` extra is absent.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time

import pytest

from testbed.client.loadgen import LoadSpec, poisson_offsets_ns
from testbed.client.targets import HttpTarget
from testbed.config import EngineConfig
from testbed.datasets import Example
from testbed.engines.registry import create_engine
from testbed.errors import MissingExtraError
from testbed.metrics.records import RequestRecord
from testbed.scale import jobs as J
from testbed.serve.batcher import BatchConfig
from testbed.serve.run import BackgroundServer

needs_locust = pytest.mark.skipif(importlib.util.find_spec("locust") is None,
                                  reason="the scale extra is not installed (pip install 'testbed[scale]')")
EXAMPLES = [Example(str(i), f"s{i} a b c", reference=f"s{i} a b c") for i in range(30)]


def _body(ex: Example):
    return HttpTarget("http://127.0.0.1:1", "marian-en-de", client="httpx").body(ex)


def test_worker_shares_split_the_one_schedule():
    spec = LoadSpec("server", rate=100, num_requests=200, warmup=5, seed=3)
    jobs = J.worker_jobs(spec, EXAMPLES, 3, _body)
    got = sorted((r["k"], r["offset_ns"]) for job in jobs for r in job["requests"])
    assert got == list(enumerate(poisson_offsets_ns(100, 3, n=200)))  # the union is the native schedule
    assert all(len(job["requests"]) > 30 for job in jobs)  # each worker has a share
    assert sorted(r["rid"] for job in jobs for r in job["warm"]) == sorted(f"w{k}:{k}" for k in range(5))
    off = J.worker_jobs(LoadSpec("offline", num_requests=10), EXAMPLES, 2, _body)
    assert [r["k"] for r in off[1]["requests"]] == [1, 3, 5, 7, 9] and off[0]["users"] == 1
    conc = J.worker_jobs(LoadSpec("concurrency", num_requests=10, concurrency=5), EXAMPLES, 2, _body)
    assert [job["users"] for job in conc] == [3, 2]


def test_lost_requests_become_failed_records_of_their_worker():
    job = {"worker": 1, "requests": [{"rid": "0:0", "offset_ns": 5}, {"rid": "2:2", "offset_ns": 9}]}
    lost = J.lost_records(job, {"0:0"}, 100)
    assert [(r.request_id, r.ok, r.error, r.extra["worker"]) for r in lost] == [("2:2", False, J.LOST_ERROR, 1)]
    recs = [RequestRecord("5:5", 50, 50), RequestRecord("w0:0", -9, -9, warmup=True), RequestRecord("1:1", 10, 10)]
    assert [r.request_id for r in J.merge(recs)] == ["w0:0", "1:1", "5:5"]


def test_without_the_extra_the_error_names_it(monkeypatch):
    from testbed.scale import require

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingExtraError, match=r"pip install 'testbed\[scale\]'"):
        require("testbed bench --workers", "locust")


@pytest.fixture(scope="module")
def null_server():
    eng = create_engine(EngineConfig(engine="null", max_new_tokens=6))
    with BackgroundServer(eng, BatchConfig(max_batch_size=8, max_wait_ms=1, max_queue=1024)) as srv:
        yield srv


@needs_locust
def test_two_workers_one_merged_summary_in_the_native_schema(null_server, tmp_path):
    from testbed.cli import main

    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"text": ex.text, "reference": ex.reference}) + "\n" for ex in EXAMPLES))
    common = ["bench", "--url", null_server.url, "--model", "marian-en-de", "--scenario", "server", "--rate", "60",
              "--num-requests", "90", "--warmup", "2", "--dataset", str(data), "--no-progress"]
    assert main([*common, "--workers", "2", "--out", str(tmp_path / "locust")]) == 0
    assert main([*common, "--out", str(tmp_path / "native")]) == 0
    dist = json.loads((tmp_path / "locust" / "summary.json").read_text())
    native = json.loads((tmp_path / "native" / "summary.json").read_text())
    workers = dist["workers"]
    assert len(workers) == 2 and all(w["state"] == "done" and w["lost"] == 0 for w in workers)
    assert all(w["recorded"] > 0 and w["p99_dispatch_delay_ms"] is not None for w in workers)
    s = dist["summary"]
    assert s["completed"] + s["failed"] == sum(w["recorded"] for w in workers) == 90
    assert s["completed"] == 90 and s["client_procs"] == 2
    assert set(s) == set(native["summary"])  # the native summary's schema
    assert set(dist) == set(native) | {"workers"}
    recs = [json.loads(line) for line in (tmp_path / "locust" / "records.jsonl").read_text().splitlines()]
    ks = [int(r["request_id"].split(":")[0]) for r in recs if not r["warmup"]]
    assert sorted(ks) == list(range(90))  # each request once, from one worker
    assert {r["extra"]["worker"] for r in recs} == {0, 1}
    nat = [json.loads(line) for line in (tmp_path / "native" / "records.jsonl").read_text().splitlines()]
    by_k = {r["request_id"]: (r["output"], r["n_out"]) for r in nat}
    assert all(by_k[r["request_id"]] == (r["output"], r["n_out"]) for r in recs if not r["warmup"])


@needs_locust
def test_a_killed_worker_is_reported_with_the_requests_it_lost(null_server, tmp_path):
    from testbed.client.bench import report
    from testbed.metrics.summary import SLO
    from testbed.scale.locust_run import locust_bench

    metrics = null_server.server.metrics
    served0 = sum(metrics.requests.values())

    def kill_later(procs):
        def go():  # once the run is under way (40 requests served), kill one worker
            deadline = time.monotonic() + 120
            while sum(metrics.requests.values()) - served0 < 40 and time.monotonic() < deadline:
                time.sleep(0.05)
            procs[1].kill()
        threading.Thread(target=go, daemon=True).start()

    spec = LoadSpec("server", rate=25, num_requests=300, warmup=2, seed=1)  # ~12 s of arrivals
    target = HttpTarget(null_server.url, "marian-en-de")
    res = locust_bench(target, EXAMPLES, spec, SLO.parse(""), {"target": "t"}, 2, tmp_path, on_started=kill_later)
    assert report is not None
    workers = res["workers"]
    dead = [w for w in workers if w["state"] != "done"]
    assert len(dead) == 1 and dead[0]["state"] == "missing" and dead[0]["lost"] > 0
    s = res["summary"]
    assert s["completed"] + s["failed"] == 300  # not silently short
    assert s["errors"].get(J.LOST_ERROR) == dead[0]["lost"] == s["failed"]
    assert "requests lost" in (tmp_path / "summary.md").read_text()


def test_cli_refuses_workers_without_url_and_worker_without_master(capsys):
    from testbed.cli import main

    assert main(["bench", "--engine", "null", "--scenario", "server", "--rate", "5", "--workers", "2"]) == 2
    assert "--workers 2: give --url" in capsys.readouterr().err
    if importlib.util.find_spec("locust") is not None:
        assert main(["bench", "--worker"]) == 2
        assert "--worker needs --master-host" in capsys.readouterr().err


@needs_locust
def test_singlestream_is_refused_with_workers():
    from testbed.errors import TestbedError
    from testbed.scale.locust_run import run_workers

    with pytest.raises(TestbedError, match="singlestream"):
        run_workers(HttpTarget("http://127.0.0.1:1", "m"), EXAMPLES, LoadSpec("singlestream"), 2)


@needs_locust
def test_concurrency_scenario_from_two_workers(null_server, tmp_path):
    from testbed.metrics.summary import SLO
    from testbed.scale.locust_run import locust_bench

    spec = LoadSpec("concurrency", num_requests=40, concurrency=3, warmup=0)
    res = locust_bench(HttpTarget(null_server.url, "marian-en-de"), EXAMPLES, spec, SLO.parse(""), {"target": "t"},
                       2, tmp_path)
    assert res["summary"]["completed"] == 40 and [w["recorded"] for w in res["workers"]] == [20, 20]
    live = [r for r in res["records"] if not r.warmup]
    assert all(r.send_ns >= r.schedule_ns for r in live)  # closed loop: scheduled when a user is free


@needs_locust
def test_find_peak_runs_each_trial_from_the_workers(null_server, tmp_path):
    from testbed.cli import main

    out = tmp_path / "peak"
    rc = main(["bench", "--url", null_server.url, "--model", "marian-en-de", "--find-peak", "--workers", "2",
               "--rate", "40", "--duration", "1", "--peak-min-queries", "40", "--peak-trials", "2", "--peak-steps", "0",
               "--warmup", "2", "--slo", "e2e=5000", "--no-progress", "--out", str(out)])
    assert rc == 0
    peak = json.loads((out / "find_peak.json").read_text())
    assert [t["rate"] for t in peak["trials"]] == [40, 80]  # doubling from --rate, no probe
    assert all(t["queries"] >= 40 for t in peak["trials"])
    assert peak["signature"]["load"] == "locust, 2 workers"
    recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["extra"]["worker"] for r in recs} == {0, 1}  # the shown trial came from both workers
    assert main(["bench", "--url", null_server.url, "--find-peak", "--workers", "2", "--master", "--slo",
                 "e2e=5000"]) == 2
