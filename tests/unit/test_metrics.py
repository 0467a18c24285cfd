"""Invariants of testbed.metrics.summary, on hand-built records and a scripted clock.

Every test asserts concrete numbers, so a wrong formula fails it.  No sleeps, no I/O.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from testbed.errors import ConfigError
from testbed.metrics.records import RequestRecord
from testbed.metrics.summary import (
    NA,
    PERCENTILE_METHOD,
    SLO,
    dispatch_delay_ms,
    e2e_ms,
    encoder_ms,
    fmt,
    is_completed,
    itl_ms,
    percentiles,
    queue_ms,
    summarize,
    tpot_ms,
    ttft_ms,
    ttft_sent_ms,
)

MS = 1_000_000  # ns per ms


class ScriptedClock:
    """Returns the scripted integer ns values in order; running out is a test bug."""

    def __init__(self, *ticks_ns: int) -> None:
        self._ticks = list(ticks_ns)
        self.calls = 0

    def __call__(self) -> int:
        if self.calls >= len(self._ticks):
            raise AssertionError(f"scripted clock exhausted after {self.calls} calls")
        t = self._ticks[self.calls]
        self.calls += 1
        return t


def stream(
    clock: ScriptedClock,
    n_chunks: int,
    tokens_per_chunk: int = 1,
    rid: str = "r",
    warmup: bool = False,
    n_in: int = 5,
) -> RequestRecord:
    """A record whose timestamps are read from ``clock``: schedule, send, then each chunk."""
    s = clock()
    a = clock()
    chunks = [clock() for _ in range(n_chunks)]
    return RequestRecord(
        request_id=rid, schedule_ns=s, send_ns=a, chunk_ns=chunks,
        chunk_tokens=[tokens_per_chunk] * n_chunks, done_ns=(chunks[-1] + MS) if chunks else a,
        n_in=n_in, n_out=n_chunks * tokens_per_chunk, warmup=warmup,
    )


def rec(s_ms: float, a_ms: float, chunks_ms: list[float], n_out: int | None = None, **kw) -> RequestRecord:
    """A record from ms values (converted to integer ns); one token per chunk by default."""
    chunks = [int(c * MS) for c in chunks_ms]
    return RequestRecord(
        request_id=kw.pop("request_id", "r"), schedule_ns=int(s_ms * MS), send_ns=int(a_ms * MS),
        chunk_ns=chunks, chunk_tokens=[1] * len(chunks),
        n_out=len(chunks) if n_out is None else n_out, n_in=kw.pop("n_in", 4), **kw,
    )


# --- per request ------------------------------------------------------------------------


def test_e2e_minus_ttft_equals_sum_of_itl_for_one_token_chunks() -> None:
    clock = ScriptedClock(1_000, 3_000, 10 * MS, 13 * MS, 17 * MS, 25 * MS)
    r = stream(clock, n_chunks=4)
    assert clock.calls == 6
    assert ttft_ms(r) == pytest.approx(9.999)  # f - s = 10 ms - 1 us
    assert e2e_ms(r) == pytest.approx(24.999)  # e - s, last chunk (done_ns is 26 ms)
    assert itl_ms(r) == pytest.approx([3.0, 4.0, 8.0])
    assert e2e_ms(r) - ttft_ms(r) == pytest.approx(sum(itl_ms(r)))
    assert tpot_ms(r) == pytest.approx(15.0 / 3)  # (e - f) / (N - 1)
    assert dispatch_delay_ms(r) == pytest.approx(0.002)


def test_schedule_relative_ttft_includes_dispatch_delay() -> None:
    on_time = rec(0, 0, [50, 60])
    late = rec(0, 30, [80, 90])  # sent 30 ms after its scheduled time
    assert dispatch_delay_ms(on_time) == 0.0
    assert dispatch_delay_ms(late) == pytest.approx(30.0)
    assert ttft_sent_ms(late) == pytest.approx(50.0)  # same server time as on_time ...
    assert ttft_ms(late) == pytest.approx(80.0)  # ... but the client's lateness counts
    assert ttft_ms(late) - ttft_sent_ms(late) == pytest.approx(dispatch_delay_ms(late))
    assert e2e_ms(late) == pytest.approx(90.0)


def test_tpot_undefined_for_one_token_and_for_single_chunk() -> None:
    one = rec(0, 0, [40])
    assert tpot_ms(one) is None
    assert itl_ms(one) == []
    assert ttft_ms(one) == pytest.approx(40.0)
    # five tokens that arrived together: no inter-token time was observed -> None, not 0
    burst = rec(0, 0, [40], n_out=5)
    assert tpot_ms(burst) is None


def test_encoder_time_is_the_encoder_pass_and_queue_wait_is_apart() -> None:
    # sent at 2 ms, waited (queue, tokenisation) until 9 ms, encoder ran until 12 ms
    r = rec(0, 2, [30, 35], decode_start_ns=9 * MS, encoder_done_ns=12 * MS)
    assert encoder_ms(r) == pytest.approx(3.0)  # encoder_done - decode_start, not - send (10 ms)
    assert queue_ms(r) == pytest.approx(7.0)  # decode_start - send
    assert encoder_ms(rec(0, 2, [30, 35])) is None
    assert encoder_ms(rec(0, 2, [30, 35], encoder_done_ns=12 * MS)) is None  # no start: not guessed
    summ = summarize([r]).to_dict()
    assert summ["median_encoder_ms"] == pytest.approx(3.0) and summ["median_queue_ms"] == pytest.approx(7.0)


def test_failed_and_tokenless_records_give_no_latency_values() -> None:
    failed = rec(0, 0, [10, 20], ok=False, error="timeout")
    empty_ok = rec(0, 0, [])
    zero_tokens = rec(0, 0, [10], n_out=0)
    for r in (failed, empty_ok, zero_tokens):
        assert not is_completed(r)
        assert ttft_ms(r) is None and ttft_sent_ms(r) is None and e2e_ms(r) is None
        assert tpot_ms(r) is None and itl_ms(r) is None and dispatch_delay_ms(r) is None


# --- sample statistics ------------------------------------------------------------------


def test_percentiles_match_numpy_linear_on_known_list() -> None:
    values = [10.0, 20.0, 30.0, 40.0, 100.0]
    st = percentiles(values)
    # linear: rank = p/100 * (n - 1); p90 -> rank 3.6 -> 40 + 0.6 * 60 = 76
    assert st == pytest.approx(
        {"count": 5, "mean": 40.0, "min": 10.0, "max": 100.0,
         "p50": 30.0, "p90": 76.0, "p95": 88.0, "p99": 97.6}
    )
    for p in (50, 90, 95, 99):
        assert st[f"p{p}"] == pytest.approx(float(np.percentile(values, p, method="linear")))
    assert percentiles([1.0, 2.0, 3.0, 4.0], ps=(50, 99.9)) == pytest.approx(
        {"count": 4, "mean": 2.5, "min": 1.0, "max": 4.0, "p50": 2.5, "p99.9": 3.997}
    )
    assert PERCENTILE_METHOD == "numpy.percentile(method='linear')"


def test_empty_sample_is_none_and_renders_na() -> None:
    st = percentiles([])
    assert st == {"count": 0, "mean": None, "min": None, "max": None,
                  "p50": None, "p90": None, "p95": None, "p99": None}
    assert percentiles([None, None])["count"] == 0  # undefined values are dropped, not 0
    assert fmt(st["p99"]) == NA == "n/a"
    assert fmt(0.0) == "0.00"  # a real zero still renders as a number
    with pytest.raises(ConfigError, match="percentile"):
        percentiles([1.0], ps=(150,))


# --- run summary ------------------------------------------------------------------------


def test_summary_counts_throughput_and_latencies() -> None:
    records = [
        rec(0, 0, [10, 20, 30], request_id="a", n_in=3),  # ttft 10, e2e 30, tpot 10
        rec(100, 100, [130, 150], request_id="b", n_in=5),  # ttft 30, e2e 50, tpot 20
        rec(200, 200, [220], request_id="c", n_in=7),  # N = 1: ttft 20, e2e 20, no tpot
    ]
    s = summarize(records, scenario="SingleStream")
    assert (s.completed, s.failed, s.warmup_excluded) == (3, 0, 0)
    assert s.duration_s == pytest.approx(0.220)  # max(e) 220 ms - min(s) 0 ms
    assert s.request_throughput == pytest.approx(3 / 0.220)
    assert s.output_throughput == pytest.approx(6 / 0.220)
    assert (s.total_input_tokens, s.total_output_tokens) == (15, 6)
    assert s.mean_ttft_ms == pytest.approx(20.0)
    assert s.median_ttft_ms == pytest.approx(20.0)
    assert s.p99_ttft_ms == pytest.approx(float(np.percentile([10, 30, 20], 99)))
    # TPOT sample is {10, 20}: the N=1 request is excluded, not counted as 0
    assert s.mean_tpot_ms == pytest.approx(15.0)
    assert s.median_tpot_ms == pytest.approx(15.0)
    assert s.mean_itl_ms == pytest.approx((10 + 10 + 20) / 3)
    assert s.mean_e2el_ms == pytest.approx((30 + 50 + 20) / 3)
    assert s.tokens_per_chunk_mean == pytest.approx(1.0)
    assert s.mean_encoder_ms is None  # no seq2seq timestamps: n/a, not 0
    d = s.to_dict()
    for key in ("completed", "failed", "request_throughput", "output_throughput",
                "total_input_tokens", "total_output_tokens", "mean_ttft_ms", "median_ttft_ms",
                "p90_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_itl_ms", "p99_e2el_ms",
                "median_dispatch_delay_ms", "p99_dispatch_delay_ms", "request_goodput",
                "slo_attainment_pct", "errors", "tokens_per_chunk_mean", "percentile_method"):
        assert key in d, key
    assert d["scenario"] == "SingleStream"
    assert d["percentile_method"] == PERCENTILE_METHOD


def test_one_token_request_is_excluded_from_tpot_sample_not_zero() -> None:
    s = summarize([rec(0, 0, [10, 30]), rec(0, 0, [5])])
    assert s.mean_tpot_ms == pytest.approx(20.0)  # would be 10.0 if N=1 gave a 0 ms sample
    only_single = summarize([rec(0, 0, [5]), rec(0, 0, [7])])
    assert only_single.completed == 2
    assert only_single.mean_tpot_ms is None and only_single.p99_tpot_ms is None
    assert only_single.mean_itl_ms is None


def test_failed_requests_are_counted_never_zero_ms() -> None:
    good = rec(0, 0, [40, 50])
    failed = rec(0, 0, [], ok=False, error="HTTP 500")
    failed_mid_stream = rec(0, 0, [1, 2], ok=False, error="HTTP 500")
    ok_but_empty = rec(0, 0, [])  # ok=True and no chunk: must fail, not give 0 ms
    s = summarize([good, failed, failed_mid_stream, ok_but_empty])
    assert (s.completed, s.failed) == (1, 3)
    assert s.errors == {"HTTP 500": 2, "no tokens": 1}
    assert s.mean_ttft_ms == pytest.approx(40.0)  # a 0 ms sample would pull it down
    assert s.mean_e2el_ms == pytest.approx(50.0)
    assert s.p99_itl_ms == pytest.approx(10.0)  # the failed stream's 1 ms gap is not pooled
    assert s.duration_s == pytest.approx(0.050)


def test_all_failed_or_empty_run_reports_none() -> None:
    for records in ([], [rec(0, 0, [], ok=False, error="boom")]):
        s = summarize(records)
        assert s.completed == 0
        assert s.duration_s is None and s.request_throughput is None and s.output_throughput is None
        assert s.mean_ttft_ms is None and s.p99_e2el_ms is None and s.mean_tpot_ms is None
        assert s.tokens_per_chunk_mean is None
        assert fmt(s.p90_ttft_ms) == "n/a"
    assert summarize([rec(0, 0, [], ok=False, error="boom")]).failed == 1


def test_warmup_is_excluded_and_counted() -> None:
    clock = ScriptedClock(0, 0, 500 * MS, 1000 * MS, 2000 * MS, 2000 * MS, 2010 * MS, 2030 * MS)
    warm = stream(clock, n_chunks=2, warmup=True, rid="warm")  # slow first call
    r = stream(clock, n_chunks=2, rid="r")
    s = summarize([warm, r])
    assert (s.completed, s.failed, s.warmup_excluded) == (1, 0, 1)
    assert s.mean_ttft_ms == pytest.approx(10.0)
    assert s.p99_ttft_ms == pytest.approx(10.0)
    assert s.duration_s == pytest.approx(0.030)  # the warm-up's 1 s is not in T
    assert s.total_output_tokens == 2
    failed_warm = rec(0, 0, [], ok=False, error="x", warmup=True)
    s2 = summarize([failed_warm, r])
    assert (s2.failed, s2.warmup_excluded, s2.errors) == (0, 1, {})


def test_tokens_per_chunk_is_pooled() -> None:
    clock = ScriptedClock(0, 0, 10 * MS, 20 * MS, 0, 0, 30 * MS)
    a = stream(clock, n_chunks=2, tokens_per_chunk=4)  # 8 tokens in 2 chunks
    b = stream(clock, n_chunks=1, tokens_per_chunk=1)  # 1 token in 1 chunk
    s = summarize([a, b])
    assert s.tokens_per_chunk_mean == pytest.approx(9 / 3)
    assert s.total_output_tokens == 9
    assert s.mean_tpot_ms == pytest.approx(10.0 / 7)  # only a: (20 - 10) / (8 - 1)


# --- SLO --------------------------------------------------------------------------------


def test_goodput_and_attainment_on_mixed_set() -> None:
    slo = SLO.parse("ttft=100,tpot=20,e2e=500")
    assert slo == SLO(ttft_ms=100.0, tpot_ms=20.0, e2e_ms=500.0)
    records = [
        rec(0, 0, [50, 60, 70]),  # meets: ttft 50, tpot 10, e2e 70
        rec(0, 0, [80]),  # meets: N=1 has no TPOT, bound considered met
        rec(0, 0, [150, 160]),  # ttft 150 > 100
        rec(0, 0, [50, 100]),  # tpot 50 > 20
        rec(0, 0, [90, 95, 600], n_out=3),  # tpot (600-90)/2 = 255 > 20, e2e 600 > 500
        rec(0, 60, [90, 100]),  # ttft_sent 30 but schedule-relative 90: meets
        rec(0, 0, [10], ok=False, error="timeout"),  # failed never meets
        rec(0, 0, [1, 2, 3], warmup=True),  # warm-up: ignored
    ]
    assert [slo.meets(r) for r in records[:7]] == [True, True, False, False, False, True, False]
    s = summarize(records, slo=slo)
    assert (s.completed, s.failed, s.warmup_excluded) == (6, 1, 1)
    assert s.duration_s == pytest.approx(0.600)
    assert s.request_goodput == pytest.approx(3 / 0.600)
    assert s.slo_attainment_pct == pytest.approx(100 * 3 / 7)
    assert (s.slo_ttft_ms, s.slo_tpot_ms, s.slo_e2e_ms) == (100.0, 20.0, 500.0)
    no_slo = summarize(records)
    assert no_slo.request_goodput is None and no_slo.slo_attainment_pct is None


def test_slo_tpot_bound_alone_and_late_dispatch() -> None:
    only_ttft = SLO(ttft_ms=50)
    late = rec(0, 40, [60, 70])  # ttft_sent 20 ms, but schedule-relative 60 ms
    assert not only_ttft.meets(late)
    assert SLO(tpot_ms=5).meets(rec(0, 0, [1000]))  # N=1: TPOT bound met
    assert not SLO(tpot_ms=5).meets(rec(0, 0, [10, 20]))


def test_slo_parse_errors_name_the_bad_key_or_value() -> None:
    with pytest.raises(ConfigError) as e:
        SLO.parse("ttft=200,latency=5")
    assert "'latency'" in str(e.value) and "ttft, tpot, e2e" in str(e.value)
    with pytest.raises(ConfigError) as e:
        SLO.parse("ttft=200,tpot=fast")
    assert "slo.tpot" in str(e.value) and "'fast'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        SLO.parse("e2e=-3")
    assert e.value.field == "slo.e2e_ms" and e.value.value == -3.0
    with pytest.raises(ConfigError, match="once"):
        SLO.parse("ttft=1,ttft_ms=2")
    with pytest.raises(ConfigError, match="key=milliseconds"):
        SLO.parse("ttft")
    with pytest.raises(ConfigError, match="slo.ttft_ms"):
        SLO(ttft_ms=0)
    with pytest.raises(ConfigError):
        SLO(tpot_ms=math.inf)
    assert SLO.parse(" TTFT_ms = 200 , e2e=2000 ") == SLO(ttft_ms=200.0, e2e_ms=2000.0)
    assert SLO.parse("").is_empty


def test_summary_module_re_exports_the_split_modules() -> None:
    from testbed.metrics import early_stopping, formulas, slo, stats
    from testbed.metrics import summary as S

    for mod in (formulas, stats, slo, early_stopping):
        for name in mod.__all__:
            assert getattr(S, name) is getattr(mod, name), name
    assert set(S.__all__) >= {*formulas.__all__, *stats.__all__, *slo.__all__, *early_stopping.__all__}
