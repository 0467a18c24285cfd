"""Drawing of :class:`~testbed.report.waterfall.Waterfall` objects (matplotlib, no pyplot state).

Nothing is computed here but the drawing: one horizontal bar per phase (top to bottom in time
order), later tokens as ticks, the phase's source in its label; several waterfalls side by side
share one time axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testbed.report.waterfall import Waterfall

#: one colour per kind of source, so the page / server / engine split reads at a glance
COLOURS = {"page": "#dd8452", "client": "#dd8452", "ui server": "#8172b3", "server": "#8172b3",
           "engine": "#4c72b0", "record": "#4c72b0"}


def colour(source: str) -> str:
    for key, c in COLOURS.items():
        if source.startswith(key):
            return c
    return "#937860"  # a span between two clocks (send / transport)


def figure(waterfalls: Sequence[Waterfall], title: str = "") -> Any:
    """A matplotlib Figure with one panel per waterfall, side by side, one shared time axis (ms)."""
    from matplotlib.figure import Figure

    n = max(1, len(waterfalls))
    rows = max([len(w.phases) for w in waterfalls] or [1])
    fig = Figure(figsize=(6.2 * n, 0.42 * rows + 1.6))
    axes = fig.subplots(1, n, sharex=True, squeeze=False)[0]
    for ax, wf in zip(axes, waterfalls):
        for y, p in enumerate(wf.phases):
            ax.barh(y, max(p.duration_ms, 0.0), left=p.start_ms, height=0.6, color=colour(p.source))
            if p.ticks_ms:
                ax.vlines(p.ticks_ms, y - 0.3, y + 0.3, color="k", lw=0.6)
            ax.text(p.end_ms, y, f" {p.duration_ms:.1f}", va="center", fontsize=7)
        ax.set_yticks(range(len(wf.phases)))
        ax.set_yticklabels([f"{p.name} [{p.source}]" for p in wf.phases], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{wf.label}\nE2E {wf.total_ms:.1f} ms", fontsize=9)
        ax.set_xlabel("ms from the send")
        ax.grid(axis="x", alpha=0.3)
    if not waterfalls:
        axes[0].text(0.5, 0.5, "no answer to draw", ha="center", va="center", transform=axes[0].transAxes)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_png(waterfalls: Sequence[Waterfall], path: Path, title: str = "") -> Path:
    """Write the figure as a PNG, atomically (a temporary file renamed into place)."""
    fig = figure(waterfalls, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)
    return path
