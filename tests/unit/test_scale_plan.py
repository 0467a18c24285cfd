"""`testbed plan`: the headroom rule, cores and cost, the SLO check, the files (pure, no extra needed)."""

from __future__ import annotations

import json

import pytest

from testbed.errors import ConfigError, TestbedError
from testbed.metrics.summary import SLO
from testbed.scale import plan as P


def _result(tmp_path, name, peak, slo="ttft=200,e2e=2000", threads=1, replicas=None):
    d = tmp_path / name
    d.mkdir()
    sig = {"target": name, "threads": threads}
    if replicas:
        sig["replicas"] = replicas
    (d / "find_peak.json").write_text(json.dumps({"peak_rate": peak, "best_invalid_rate": None,
                                                  "slo": SLO.parse(slo).to_dict(), "signature": sig}))
    return d


def test_headroom_rule():
    assert P.replicas_for(30, 10, headroom=0.25) == 4  # 30 / 7.5 = 4 exactly: no extra replica
    assert P.replicas_for(30.1, 10, headroom=0.25) == 5
    assert P.replicas_for(30, 10, headroom=0) == 3
    assert P.replicas_for(0.1, 10) == 1
    with pytest.raises(ConfigError, match="headroom"):
        P.replicas_for(1, 10, headroom=1)


def test_cores_cost_and_utilisation():
    row = P.plan_row(P.PeakResult("a", 10.0, {}, cores_per_replica=2), rate=30, headroom=0.25, core_hour_price=0.05)
    assert (row.replicas, row.cores) == (4, 8)
    assert row.cost_per_million == pytest.approx(8 * 0.05 / (30 * 3600) * 1e6)
    assert row.utilisation == pytest.approx(30 / 40)
    assert P.predicted_peak(10.0, 2) == 20.0


def test_slo_check_refuses_a_peak_found_under_a_looser_slo(tmp_path):
    res = P.load_peak(_result(tmp_path, "a", 10, slo="ttft=200,e2e=2000"))
    assert P.slo_covers(res.slo, SLO.parse("e2e=3000"))[0]  # looser plan: the peak holds
    ok, why = P.slo_covers(res.slo, SLO.parse("e2e=1000"))
    assert not ok and "e2e" in why
    ok, why = P.slo_covers(res.slo, SLO.parse("tpot=50"))
    assert not ok and "not bounded" in why


def test_load_peak_divides_by_replicas_and_refuses_no_peak(tmp_path):
    assert P.load_peak(_result(tmp_path, "two", 30, replicas=2)).peak_rate == 15
    d = tmp_path / "none"
    d.mkdir()
    (d / "find_peak.json").write_text(json.dumps({"peak_rate": None, "best_invalid_rate": 4.0}))
    with pytest.raises(TestbedError, match="no valid peak"):
        P.load_peak(d)
    with pytest.raises(TestbedError, match="no find_peak.json"):
        P.load_peak(tmp_path / "missing")


def test_cli_writes_table_json_and_plot(tmp_path, capsys):
    from testbed.cli import main

    a = _result(tmp_path, "fast", 20, threads=1)
    b = _result(tmp_path, "slow", 5, threads=2)
    c = _result(tmp_path, "loose", 50, slo="e2e=9000")
    out = tmp_path / "plan"
    rc = main(["plan", "--results", str(a), str(b), str(c), "--rate", "30", "--slo", "e2e=2000",
               "--core-hour-price", "0.04", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "plan.json").read_text())
    rows = {r["label"]: r for r in data["rows"]}
    assert (rows["fast"]["replicas"], rows["fast"]["cores"]) == (2, 2)
    assert (rows["slow"]["replicas"], rows["slow"]["cores"]) == (8, 16)
    assert [r["label"] for r in data["refused"]] == ["loose"]
    assert (out / "replicas_vs_rate.png").stat().st_size > 0
    text = capsys.readouterr().out
    assert "| fast |" in text and "Not planned: loose" in text


def test_scaling_factor_changes_replicas_and_prediction():
    half = P.Scaling(0.5, 2, "given")
    assert P.replicas_for(7, 10, 0.25, half) == 1  # one replica: no sharing, E does not apply
    assert P.replicas_for(8, 10, 0.25) == 2  # linear: 2 x 7.5 >= 8
    assert P.replicas_for(8, 10, 0.25, half) == 3  # 2 x 0.5 x 7.5 = 7.5 < 8 <= 3 x 0.5 x 7.5
    assert P.predicted_peak(10, 2, P.Scaling(0.6)) == pytest.approx(12)
    assert P.predicted_peak(10, 1, P.Scaling(0.6)) == 10
    assert P.predicted_peak(10, 2) == 20  # the stated default: linear
    row = P.plan_row(P.PeakResult("a", 10.0, {}, cores_per_replica=1), rate=8, scaling=half)
    assert (row.replicas, row.planned_rate_per_replica) == (3, pytest.approx(3.75))
    assert row.utilisation == pytest.approx(8 / 15)
    with pytest.raises(ConfigError, match="efficiency"):
        P.Scaling(0)


def test_cli_measured_scaling_from_a_two_replica_run(tmp_path, capsys):
    from testbed.cli import main

    one = _result(tmp_path, "one", 10)
    two = _result(tmp_path, "two", 12, replicas=2)  # the measured total, whatever the signature says
    out = tmp_path / "plan"
    rc = main(["plan", "--results", str(one), "--rate", "25", "--slo", "e2e=2000", "--scaling", str(one), str(two),
               "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "plan.json").read_text())
    assert data["scaling"]["efficiency"] == pytest.approx(0.6) and data["scaling"]["source"].startswith("measured")
    assert data["rows"][0]["replicas"] == 6  # 25 / (0.6 x 7.5) = 5.56; linear would say 4
    text = capsys.readouterr().out
    assert "0.60 x its 1-replica peak" in text and "Beyond 2 replicas" in text
    rc = main(["plan", "--results", str(one), "--rate", "5", "--slo", "e2e=2000", "--scaling", str(one), str(two),
               "--efficiency", "0.7"])
    assert rc != 0 and "efficiency" in capsys.readouterr().err
