"""The load generator: seeded Poisson schedules, scenarios' scheduled times, the in-process target,
batched streaming in the engine base, and the CLI's load path (the peak search: test_peak.py)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from testbed.cli import main
from testbed.client.bench import report
from testbed.client.loadgen import LoadSpec, poisson_offsets_ns, run
from testbed.client.targets import InprocTarget, Target
from testbed.clock import now_ns
from testbed.config import EngineConfig
from testbed.datasets import Example
from testbed.engines.fake.engine import FakeEngine, NullEngine
from testbed.engines.registry import create_engine
from testbed.errors import ConfigError
from testbed.metrics import summary as S
from testbed.serve.batcher import BatchConfig

EXAMPLES = [Example(str(i), f"w{i} a b c", reference=f"w{i} a b c") for i in range(30)]


def test_poisson_schedule_is_seeded_and_reproducible():
    a = poisson_offsets_ns(50.0, seed=7, n=4000)
    assert a == poisson_offsets_ns(50.0, seed=7, n=4000)
    assert a != poisson_offsets_ns(50.0, seed=8, n=4000)
    gaps = np.diff([0, *a]) / 1e9
    assert all(g >= 0 for g in gaps)
    assert abs(gaps.mean() - 1 / 50) < 0.002  # Exp(rate) gaps: mean 1/rate (4000 samples: ~1.6% s.e.)
    d = poisson_offsets_ns(50.0, seed=7, duration_s=10.0)
    assert d == a[: len(d)] and d[-1] <= 10e9 < a[len(d)]


def test_load_spec_validation_names_the_problem():
    with pytest.raises(ConfigError, match="rate"):
        LoadSpec("server")
    with pytest.raises(ConfigError, match="scenario"):
        LoadSpec("bursty")
    with pytest.raises(ConfigError, match="concurrency"):
        LoadSpec("concurrency", concurrency=0)


@pytest.fixture(scope="module")
def null():
    return create_engine(EngineConfig(engine="null", max_new_tokens=5))


@pytest.mark.parametrize("spec", [
    LoadSpec("singlestream", warmup=2), LoadSpec("concurrency", concurrency=3, warmup=2),
    LoadSpec("offline", num_requests=30, warmup=2), LoadSpec("server", rate=400, num_requests=30, warmup=2, seed=3),
])
def test_scenarios_inproc(null, spec):
    recs = run(InprocTarget(null, BatchConfig(max_batch_size=4, max_wait_ms=1)), EXAMPLES, spec)
    live = [r for r in recs if not r.warmup]
    assert sum(r.warmup for r in recs) == 2 and len(live) == 30
    assert all(S.is_completed(r) and r.n_out == 5 == len(r.chunk_ns) for r in live)
    assert all(r.schedule_ns <= r.send_ns <= r.chunk_ns[0] for r in live)
    if spec.scenario == "offline":
        assert len({r.schedule_ns for r in live}) == 1
    if spec.scenario == "server":
        s0 = min(r.schedule_ns for r in live)
        assert sorted(r.schedule_ns - s0 for r in live) == [o - poisson_offsets_ns(400, 3, n=30)[0]
                                                             for o in poisson_offsets_ns(400, 3, n=30)]


def test_batch_stream_equals_single_streams_and_cancels_rows():
    eng = FakeEngine(EngineConfig(engine="fake")).load()
    texts = ["a b c", "d e", "f g h i j"]
    prepared = [eng.prepare(eng.stream(t).request) for t in texts]
    bs = eng.stream_batch(prepared)
    got: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for i, ev in bs:
        got[i].append(ev.token_id)
        if i == 2 and len(got[2]) == 2:
            bs.cancel(2)
    singles = [eng.stream(t).run().token_ids for t in texts]
    assert got[0] == singles[0] and got[1] == singles[1] and got[2] == singles[2][:2]
    assert [r.finish_reason for r in bs.rows] == ["eos", "eos", "cancelled"]
    recs = [r.record() for r in bs.rows]
    assert all(r.ok for r in recs) and recs[0].encoder_done_ns is not None


def test_rejections_inproc_are_counted_not_timed():
    class Slow(NullEngine):
        def _decode(self, prepared):
            import time

            for item in super()._decode(prepared):
                time.sleep(0.002)
                yield item

    eng = Slow(EngineConfig(engine="null", max_new_tokens=4)).load()
    recs = run(InprocTarget(eng, BatchConfig(max_queue=2)), EXAMPLES, LoadSpec("offline", num_requests=30, warmup=0))
    summ = S.summarize(recs)
    assert summ.failed > 0 and summ.completed > 0 and summ.completed + summ.failed == 30
    assert set(summ.errors) == {"status 429 (rejected: queue full)"}


def test_cli_load_inproc_writes_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["bench", "--engine", "null", "--target", "inproc", "--scenario", "concurrency", "--concurrency", "4",
               "--num-requests", "40", "--max-new-tokens", "6", "--slo", "ttft=500,e2e=1000", "--out", str(out),
               "--no-progress", "--max-batch-size", "4"])
    assert rc == 0
    md = capsys.readouterr().out
    assert "| TTFT (ms) | 40 |" in md and "not enough queries: 40 < 662" in md
    summ = json.loads((out / "summary.json").read_text())
    assert summ["summary"]["completed"] == 40 and summ["summary"]["total_output_tokens"] == 240
    assert summ["summary"]["rejected"] == 0 and summ["summary"]["slo_attainment_pct"] == 100.0
    assert summ["tail_claims"]["p99_ttft"]["enough_queries"] is False
    assert summ["tail_claim_rule"].startswith("MLPerf LoadGen early stopping, SingleStream rule")
    assert len((out / "records.jsonl").read_text().splitlines()) == 45  # 5 warm-up + 40
    assert (out / "latency_cdf.png").stat().st_size > 0


def test_cli_refuses_inconsistent_targets(capsys):
    assert main(["bench", "--target", "http", "--scenario", "server", "--rate", "1"]) == 2
    assert "needs --url" in capsys.readouterr().err
    assert main(["bench", "--engine", "null", "--scenario", "server"]) == 2
    assert "rate" in capsys.readouterr().err


class _EchoOutOfOrder(Target):
    """Scripted target: answers with the source text; example i takes 3 - i % 3 turns of the event loop,
    so with several users a later request finishes first (no sleeps, no clock)."""

    label = "scripted echo"

    async def send(self, ex, rec):
        rec.send_ns = now_ns()
        for _ in range(3 - int(ex.id) % 3):
            await asyncio.sleep(0)
        rec.chunk_ns, rec.chunk_tokens = [now_ns()], [4]
        rec.n_out, rec.output, rec.done_ns = 4, ex.text, now_ns()


def test_concurrency_bleu_pairs_each_output_with_its_own_reference():
    spec = LoadSpec("concurrency", concurrency=3, num_requests=30, warmup=0)
    recs = run(_EchoOutOfOrder(), EXAMPLES, spec)
    order = [int(r.request_id.split(":")[0]) for r in recs]
    assert order != sorted(order)  # completion order differs from issue order: the case under test
    res = report(recs, spec, S.SLO(), {"target": "scripted"}, EXAMPLES, None, "t")
    assert res["accuracy"]["bleu"] == 100.0 and res["accuracy"]["n"] == 30  # echo == reference, when paired right
