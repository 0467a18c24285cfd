"""``testbed plan``: replicas, cores and cost for a traffic rate, from find-peak results (pure functions).

Input: the ``find_peak.json`` of one or more configurations (``testbed bench --find-peak --out DIR``),
each measured on one replica (or on ``signature.replicas`` replicas: the peak is then divided
by them).  For each configuration, at rate ``R`` (req/s):

* **SLO check**: the plan's SLO must be no stricter than the one the peak was found under
  (each bound the plan sets is set there, with a value <= the plan's); else the peak says
  nothing about the plan's SLO and the configuration is refused, with the reason;
* **headroom rule**: a replica is planned at most at ``(1 - headroom) x peak`` (default
  headroom 0.25: a replica runs at <= 75 % of the highest rate it met the SLO at, with a valid
  MLPerf p99 claim), so ``replicas = ceil(R / ((1 - headroom) x peak))``;
* **cores** = replicas x cores per replica (the engine's ``threads`` in the signature, or
  ``--cores-per-replica``);
* **cost per million requests** = cores x price per core-hour / (R x 3600) x 1e6.

Prediction (to check the plan): ``N`` replicas on ``N`` x the cores reach ``N x peak``
(:func:`predicted_peak`): linear, with no shared bottleneck assumed -- the measured 2-replica peak
says how far that holds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError, TestbedError
from testbed.metrics.summary import SLO

DEFAULT_HEADROOM = 0.25


@dataclass(frozen=True)
class PeakResult:
    """One configuration's find-peak result: the per-replica peak (req/s) and what it was measured under."""

    label: str
    peak_rate: float
    slo: dict[str, float | None]
    cores_per_replica: int | None
    path: str = ""


@dataclass(frozen=True)
class PlanRow:
    label: str
    peak_rate: float
    planned_rate_per_replica: float
    replicas: int
    cores: int | None
    cost_per_million: float | None
    utilisation: float  # R / (replicas x peak)


def load_peak(path: Path, cores_per_replica: int | None = None) -> PeakResult:
    """Read ``DIR/find_peak.json`` (or the file itself); refuses a result without a valid peak."""
    f = path / "find_peak.json" if path.is_dir() else path
    if not f.is_file():
        raise TestbedError(f"--results {path}: no find_peak.json there "
                           "(write one with testbed bench --find-peak --out DIR)")
    data = json.loads(f.read_text())
    sig = data.get("signature") or {}
    peak = data.get("peak_rate")
    if not peak:
        raise TestbedError(f"--results {path}: the search found no valid peak (best invalid rate "
                           f"{data.get('best_invalid_rate')}); it cannot be planned on")
    replicas = int(sig.get("replicas") or 1)
    threads = cores_per_replica or sig.get("threads") or sig.get("replica_threads")
    label = str(sig.get("label") or sig.get("target") or f.parent.name)
    return PeakResult(label=label, peak_rate=float(peak) / replicas, slo=dict(data.get("slo") or {}),
                      cores_per_replica=int(threads) if threads else None, path=str(f))


def slo_covers(measured: dict[str, Any], wanted: SLO) -> tuple[bool, str]:
    """Whether a peak found under ``measured`` bounds holds for ``wanted``: each wanted bound set there, <= it."""
    for key, bound in wanted.to_dict().items():
        if bound is None:
            continue
        have = measured.get(key)
        if have is None:
            return False, f"{key} was not bounded when the peak was found"
        if have > bound:
            return False, f"the peak was found under {key} <= {have:g}, looser than the plan's {bound:g}"
    return True, "ok"


def replicas_for(rate: float, peak: float, headroom: float = DEFAULT_HEADROOM) -> int:
    """The headroom rule: ``ceil(rate / ((1 - headroom) x peak))``, at least 1."""
    if not 0 <= headroom < 1:
        raise ConfigError("headroom", headroom, "a fraction in [0, 1)")
    if not peak > 0:
        raise ConfigError("peak_rate", peak, "a positive rate")
    return max(1, math.ceil(rate / ((1 - headroom) * peak) - 1e-9))


def plan_row(res: PeakResult, rate: float, headroom: float = DEFAULT_HEADROOM,
             core_hour_price: float | None = None) -> PlanRow:
    if not rate > 0:
        raise ConfigError("rate", rate, "a positive number of requests per second")
    n = replicas_for(rate, res.peak_rate, headroom)
    cores = n * res.cores_per_replica if res.cores_per_replica else None
    cost = cores * core_hour_price / (rate * 3600) * 1e6 if cores is not None and core_hour_price is not None else None
    return PlanRow(res.label, res.peak_rate, (1 - headroom) * res.peak_rate, n, cores, cost,
                   rate / (n * res.peak_rate))


def predicted_peak(peak_one: float, replicas: int) -> float:
    """The peak of ``replicas`` replicas predicted from one replica's: linear scaling."""
    return peak_one * replicas


def plan(results: Sequence[PeakResult], rate: float, slo: SLO, headroom: float = DEFAULT_HEADROOM,
         core_hour_price: float | None = None) -> tuple[list[PlanRow], list[tuple[str, str]]]:
    """Rows for the results whose SLO covers ``slo``; the others as ``(label, why refused)``."""
    rows, refused = [], []
    for res in results:
        ok, why = slo_covers(res.slo, slo)
        if ok:
            rows.append(plan_row(res, rate, headroom, core_hour_price))
        else:
            refused.append((res.label, why))
    return rows, refused


def render(rows: Sequence[PlanRow], refused: Sequence[tuple[str, str]], rate: float, slo: SLO,
           headroom: float, price: float | None) -> str:
    bounds = ", ".join(f"{k.removeprefix('slo_').removesuffix('_ms')} <= {v:g} ms"
                       for k, v in slo.to_dict().items() if v is not None)
    head = (f"Capacity plan for {rate:g} req/s under {bounds}; "
            f"headroom rule: a replica runs at <= {100 * (1 - headroom):g} % of its find-peak rate")
    lines = [head, "", "| configuration | peak / replica (req/s) | planned / replica | replicas | cores | "
             f"cost per 1M requests{f' (at {price:g} per core-hour)' if price is not None else ''} | utilisation |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r.cost_per_million is None, r.cost_per_million or 0, r.replicas)):
        cores = "-" if r.cores is None else str(r.cores)
        cost = "-" if r.cost_per_million is None else f"{r.cost_per_million:.3g}"
        lines.append(f"| {r.label} | {r.peak_rate:.3g} | {r.planned_rate_per_replica:.3g} | {r.replicas} | {cores} | "
                     f"{cost} | {100 * r.utilisation:.0f} % |")
    for label, why in refused:
        lines.append(f"\nNot planned: {label}: {why}.")
    return "\n".join(lines)


def to_json(rows: Sequence[PlanRow], refused: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {"rows": [asdict(r) for r in rows], "refused": [{"label": a, "why": b} for a, b in refused]}


def plot(results: Sequence[PeakResult], rate: float, headroom: float, path: Path) -> Path:
    """Replicas needed vs rate (0 .. 2 x ``rate``) for each configuration, the planned rate marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rates = np.linspace(rate / 50, 2 * rate, 200)
    fig, ax = plt.subplots(figsize=(7, 4))
    for res in results:
        ax.step(rates, [replicas_for(float(r), res.peak_rate, headroom) for r in rates], where="post",
                label=f"{res.label} (peak {res.peak_rate:.3g} req/s per replica)")
    ax.axvline(rate, color="0.5", ls="--", lw=1, label=f"planned rate {rate:g} req/s")
    ax.set_xlabel("rate (req/s)")
    ax.set_ylabel("replicas")
    ax.set_title(f"Replicas needed (headroom {100 * headroom:g} %)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
