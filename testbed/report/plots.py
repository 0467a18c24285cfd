"""Plots rendered from records (matplotlib, Agg backend; nothing is computed here but the drawing)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testbed.metrics import summary as S
from testbed.metrics.records import RequestRecord


def latency_cdf(records: Sequence[RequestRecord], path: Path, title: str = "") -> Path | None:
    """CDF of TTFT, E2E and TPOT (ms) of the completed, non-warm-up records; None if nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    live = [r for r in records if S.is_completed(r) and not r.warmup]
    series = {name: [v for v in map(fn, live) if v is not None]
              for name, fn in (("TTFT", S.ttft_ms), ("E2E", S.e2e_ms), ("TPOT", S.tpot_ms))}
    if not any(series.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, names in zip(axes, (("TTFT", "E2E"), ("TPOT",))):
        for name in names:
            vals = np.sort(np.asarray(series[name]))
            if vals.size == 0:
                continue
            ax.step(vals, np.arange(1, vals.size + 1) / vals.size, where="post",
                    label=f"{name} (p50 {np.percentile(vals, 50):.3g}, p90 {np.percentile(vals, 90):.3g} ms)")
        for q in (0.5, 0.9, 0.99):
            ax.axhline(q, color="0.85", lw=0.8, zorder=0)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests")
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_title("time to first token / end-to-end")
    axes[1].set_title("time per output token")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write atomically (a temporary file renamed into place) and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
