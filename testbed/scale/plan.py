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

**Scaling factor**: ``n`` replicas of the serving stack do not reach ``n x peak`` where they share
something (Ray Serve's one HTTP proxy, its controller, the cores those run on).  The plan takes a
per-replica efficiency ``E`` -- ``peak_N / (N x peak_1)``, from a 1-replica and an ``N``-replica
find-peak of the same configuration behind the same stack (``--scaling ONE MANY``), or given
(``--efficiency``), else :data:`DEFAULT_EFFICIENCY` (1: linear, an assumption and an upper
bound) -- and applies it to every ``n >= 2``: ``n`` replicas serve ``n x E x peak``, planned at
``(1 - headroom) x`` that.  ``E`` measured at ``N`` replicas says nothing about ``n > N`` (a
shared proxy makes it fall further): beyond ``N`` the plan is optimistic, and it says so.

Prediction (to check the plan): ``N`` replicas reach ``N x E x peak_1`` (:func:`predicted_peak`).
A prediction checked against the run ``E`` came from is circular; ``E`` transfers only to the
same stack on the same kind of machine with the same sharing (here: replicas, proxy and load on
2 cores).
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
DEFAULT_EFFICIENCY = 1.0
DEFAULT_EFFICIENCY_SOURCE = "assumed linear (no measured 2-replica run given): an upper bound"


@dataclass(frozen=True)
class Scaling:
    """Per-replica efficiency ``E`` at ``replicas`` replicas (``n`` replicas serve ``n x E x peak``), and its source."""

    efficiency: float = DEFAULT_EFFICIENCY
    replicas: int = 2
    source: str = DEFAULT_EFFICIENCY_SOURCE

    def __post_init__(self) -> None:
        if not 0 < self.efficiency <= 1.5:
            raise ConfigError("efficiency", self.efficiency, "a per-replica efficiency in (0, 1.5], usually <= 1")
        if not isinstance(self.replicas, int) or self.replicas < 2:
            raise ConfigError("scaling_replicas", self.replicas, "an integer >= 2")

    def at(self, n: int) -> float:
        """The efficiency assumed for ``n`` replicas: 1 for one, ``E`` for two or more."""
        return 1.0 if n <= 1 else self.efficiency


def measured_scaling(one: PeakResult, many: PeakResult, replicas: int) -> Scaling:
    """``E = peak_N / (N x peak_1)`` from the find-peak of 1 and of ``replicas`` replicas (peaks as measured)."""
    if not replicas >= 2:
        raise ConfigError("scaling_replicas", replicas, "an integer >= 2")
    e = many.peak_rate / (replicas * one.peak_rate)
    return Scaling(e, replicas, f"measured: {replicas} replicas peaked at {many.peak_rate:.3g} req/s, 1 at "
                                f"{one.peak_rate:.3g} ({many.path or many.label} / {one.path or one.label})")


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


def load_peak(path: Path, cores_per_replica: int | None = None, per_replica: bool = True) -> PeakResult:
    """Read ``DIR/find_peak.json`` (or the file itself); refuses a result without a valid peak.
    ``per_replica``: a signature's ``replicas: N`` divides the peak by N (else the peak as measured)."""
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
    replicas = int(sig.get("replicas") or 1) if per_replica else 1
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


def replicas_for(rate: float, peak: float, headroom: float = DEFAULT_HEADROOM, scaling: Scaling | None = None) -> int:
    """The headroom rule with the scaling factor: the fewest ``n`` with ``n x E(n) x (1 - headroom) x peak >= rate``
    (linear, ``E = 1``: ``ceil(rate / ((1 - headroom) x peak))``), at least 1."""
    if not 0 <= headroom < 1:
        raise ConfigError("headroom", headroom, "a fraction in [0, 1)")
    if not peak > 0:
        raise ConfigError("peak_rate", peak, "a positive rate")
    scaling = scaling or Scaling()
    per = (1 - headroom) * peak
    if rate <= per * (1 + 1e-9):
        return 1
    return max(2, math.ceil(rate / (per * scaling.efficiency) - 1e-9))


def plan_row(res: PeakResult, rate: float, headroom: float = DEFAULT_HEADROOM,
             core_hour_price: float | None = None, scaling: Scaling | None = None) -> PlanRow:
    if not rate > 0:
        raise ConfigError("rate", rate, "a positive number of requests per second")
    scaling = scaling or Scaling()
    n = replicas_for(rate, res.peak_rate, headroom, scaling)
    cores = n * res.cores_per_replica if res.cores_per_replica else None
    cost = cores * core_hour_price / (rate * 3600) * 1e6 if cores is not None and core_hour_price is not None else None
    return PlanRow(res.label, res.peak_rate, (1 - headroom) * res.peak_rate * scaling.at(n), n, cores, cost,
                   rate / predicted_peak(res.peak_rate, n, scaling))


def predicted_peak(peak_one: float, replicas: int, scaling: Scaling | None = None) -> float:
    """The peak of ``replicas`` replicas predicted from one replica's: ``replicas x E x peak_one``."""
    return peak_one * replicas * (scaling or Scaling()).at(replicas)


def plan(results: Sequence[PeakResult], rate: float, slo: SLO, headroom: float = DEFAULT_HEADROOM,
         core_hour_price: float | None = None, scaling: Scaling | None = None
         ) -> tuple[list[PlanRow], list[tuple[str, str]]]:
    """Rows for the results whose SLO covers ``slo``; the others as ``(label, why refused)``."""
    rows, refused = [], []
    for res in results:
        ok, why = slo_covers(res.slo, slo)
        if ok:
            rows.append(plan_row(res, rate, headroom, core_hour_price, scaling))
        else:
            refused.append((res.label, why))
    return rows, refused


def render(rows: Sequence[PlanRow], refused: Sequence[tuple[str, str]], rate: float, slo: SLO,
           headroom: float, price: float | None, scaling: Scaling | None = None) -> str:
    scaling = scaling or Scaling()
    bounds = ", ".join(f"{k.removeprefix('slo_').removesuffix('_ms')} <= {v:g} ms"
                       for k, v in slo.to_dict().items() if v is not None)
    head = (f"Capacity plan for {rate:g} req/s under {bounds}; "
            f"headroom rule: a replica runs at <= {100 * (1 - headroom):g} % of its find-peak rate; "
            f"scaling: from 2 replicas on, each serves {scaling.efficiency:.2f} x its 1-replica peak "
            f"({scaling.source})")
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
    beyond = [r.label for r in rows if r.replicas > scaling.replicas]
    if beyond:
        lines.append(f"\nBeyond {scaling.replicas} replicas ({', '.join(beyond)}) the efficiency is extrapolated, "
                     "not measured: a shared proxy or controller lowers it further, so read those rows as a lower "
                     "bound on replicas.")
    return "\n".join(lines)


def to_json(rows: Sequence[PlanRow], refused: Sequence[tuple[str, str]], scaling: Scaling | None = None
            ) -> dict[str, Any]:
    return {"rows": [asdict(r) for r in rows], "refused": [{"label": a, "why": b} for a, b in refused],
            "scaling": asdict(scaling or Scaling())}


def plot(results: Sequence[PeakResult], rate: float, headroom: float, path: Path,
         scaling: Scaling | None = None) -> Path:
    """Replicas needed vs rate (0 .. 2 x ``rate``) for each configuration, the planned rate marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rates = np.linspace(rate / 50, 2 * rate, 200)
    fig, ax = plt.subplots(figsize=(7, 4))
    for res in results:
        ax.step(rates, [replicas_for(float(r), res.peak_rate, headroom, scaling) for r in rates], where="post",
                label=f"{res.label} (peak {res.peak_rate:.3g} req/s per replica)")
    ax.axvline(rate, color="0.5", ls="--", lw=1, label=f"planned rate {rate:g} req/s")
    ax.set_xlabel("rate (req/s)")
    ax.set_ylabel("replicas")
    ax.set_title(f"Replicas needed (headroom {100 * headroom:g} %, "
                 f"per-replica efficiency {(scaling or Scaling()).efficiency:.2f} from 2 replicas)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
