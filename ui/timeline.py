"""One answer's waterfall in the demo: the page's times and the UI server's, on one clock.

The page measures with ``performance.now()`` (ms) and maps it onto the UI server's
``perf_counter_ns`` with the offset of its best clock ping (``offset_ms``: server ms - page ms);
this module turns the page's times, the UI server's and the engine's (or the remote server's)
into :class:`~testbed.report.waterfall.Mark` lists and calls :func:`testbed.report.waterfall.build`,
the same function the PNG of ``testbed report --waterfall`` uses.  The page's send is the start
and the last token in the page's DOM the end, so the phases sum to the served E2E the page shows.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from testbed.report import waterfall as W
from testbed.report.waterfall_plot import colour
from testbed.ui.direct import Ticket, is_loopback

PAGE_SEND = "send (page -> ui server)"
GRADIO_SEND = "page -> handler (Gradio queue, SSE)"
LOCK = "queue wait (engine lock)"
PROXY = "ui server prepares the call"
SERVER_SEND = "send (ui server -> server)"
NO_TIMING = "server (no timing offered)"
BACK = "transport (server -> ui server)"
RELAY = "relay (ui server)"
TO_PAGE = "transport (ui server -> page)"
RENDER = "render (chunk -> DOM)"
GRADIO_BACK = "transport / Gradio + render"


def _ns(page: dict[str, Any], key: str) -> int | None:
    v = page.get(key)
    off = page.get("offset")
    if not isinstance(v, (int, float)) or not isinstance(off, (int, float)):
        return None
    return int(round((v + off) * 1e6))


def _shifted(timing: dict[str, Any], delta: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in timing.items():
        if k.endswith("_ns") and isinstance(v, int):
            out[k] = v - delta
        elif k == "token_ns" and isinstance(v, list):
            out[k] = [int(x) - delta for x in v]
        else:
            out[k] = v
    return out


def direct_marks(t: Ticket, page: dict[str, Any]) -> tuple[int, list[W.Mark], list[str]]:
    """``(start, marks, notes)`` of a direct-path answer (in-process or served)."""
    start, recv, dom = _ns(page, "t0"), _ns(page, "recv_last"), _ns(page, "dom_last")
    if start is None or recv is None or dom is None or t.arrival_ns is None:
        raise ValueError("the page's times are incomplete (no token reached the page)")
    notes = [f"page clock -> server clock: best ping round trip {page.get('rtt', float('nan')):.2f} ms"]
    marks = [W.Mark(PAGE_SEND, t.arrival_ns, "page -> ui server")]
    if t.served:
        marks.append(W.Mark(PROXY, t.proxy_send_ns or t.arrival_ns, "ui server"))
        tm = t.server_timing
        if tm and tm.get("arrival_ns") is not None and t.proxy_send_ns and t.proxy_last_recv_ns:
            if not is_loopback(t.url or ""):
                end = tm.get("last_write_ns") or (tm.get("token_ns") or [tm["arrival_ns"]])[-1]
                delta = (int(tm["arrival_ns"]) + int(end) - t.proxy_send_ns - t.proxy_last_recv_ns) // 2
                tm = _shifted(tm, delta)
                notes.append("remote server: its clock aligned by splitting the network time evenly (estimate)")
            marks.append(W.Mark(SERVER_SEND, int(tm["arrival_ns"]), "ui server -> server"))
            marks += W.server_marks(tm)
            marks.append(W.Mark(BACK, t.proxy_last_recv_ns, "ui server"))
        elif t.proxy_last_recv_ns:
            marks.append(W.Mark(NO_TIMING, t.proxy_last_recv_ns, "ui server"))
            notes.append("the server sent no return_timing: its phases are one bar")
        if t.last_write_ns:
            marks.append(W.Mark(RELAY, t.last_write_ns, "ui server"))
    else:
        rec = t.record
        if rec is not None and rec.chunk_ns:
            marks.append(W.Mark(LOCK, rec.schedule_ns, "ui server"))
            marks += W.engine_marks(rec.schedule_ns, rec.decode_start_ns, rec.encoder_done_ns, rec.chunk_ns)
        if t.last_write_ns:
            marks.append(W.Mark(W.DETOK, t.last_write_ns, "ui server"))
    marks += [W.Mark(TO_PAGE, recv, "page"), W.Mark(RENDER, dom, "page")]
    return start, marks, notes


def gradio_marks(timing: dict[str, Any], page: dict[str, Any]) -> tuple[int, list[W.Mark], list[str]]:
    """``(start, marks, notes)`` of an answer that went through Gradio's queue (the old path)."""
    start, dom = _ns(page, "t0"), _ns(page, "dom_last")
    arrival = timing.get("arrival_ns")
    if start is None or dom is None or arrival is None:
        raise ValueError("the page's times are incomplete (no token reached the page)")
    marks = [W.Mark(GRADIO_SEND, arrival, "page -> ui server")]
    rec = timing.get("record")
    if rec is not None and rec.chunk_ns:
        marks.append(W.Mark(LOCK, rec.schedule_ns, "ui server"))
        marks += W.engine_marks(rec.schedule_ns, rec.decode_start_ns, rec.encoder_done_ns, rec.chunk_ns)
    if timing.get("last_yield_ns"):
        marks.append(W.Mark(W.DETOK, timing["last_yield_ns"], "ui server"))
    marks.append(W.Mark(GRADIO_BACK, dom, "page"))
    return start, marks, [f"page clock -> server clock: best ping round trip {page.get('rtt', float('nan')):.2f} ms"]


def waterfall(label: str, start: int, marks: Sequence[W.Mark], notes: Sequence[str] = ()) -> W.Waterfall:
    """The marks end with the page's last DOM write: page-clock start and end bound the server's marks."""
    wf = W.build(label, start, marks, end_ns=marks[-1].t_ns if marks else None)
    return W.Waterfall(wf.label, wf.phases, tuple(notes) + wf.notes)


# ------------------------------------------------------------------ HTML (the page's plot)
def html_of(waterfalls: Sequence[W.Waterfall], empty: str = "", ids: Sequence[str] = ()) -> str:
    """Side-by-side waterfalls on one shared time axis, as plain HTML bars (no script, no image).

    Each bar carries ``data-name / data-start-ms / data-end-ms / data-source`` so a test reads the
    numbers the bar was drawn from.
    """
    if not waterfalls:
        return f'<div class="tb-wf-empty">{html.escape(empty)}</div>'
    axis = max(w.total_ms for w in waterfalls) or 1.0
    cols = []
    for k, w in enumerate(waterfalls):
        nonce = html.escape(ids[k]) if k < len(ids) else ""
        rows = []
        for p in w.phases:
            left, width = 100 * p.start_ms / axis, max(100 * p.duration_ms / axis, 0.15)
            ticks = "".join(f'<i style="left:{100 * (x - p.start_ms) / max(p.duration_ms, 1e-9):.2f}%"></i>'
                            for x in p.ticks_ms[:400])
            rows.append(
                f'<div class="tb-phase" data-name="{html.escape(p.name)}" data-start-ms="{p.start_ms:.4f}" '
                f'data-end-ms="{p.end_ms:.4f}" data-source="{html.escape(p.source)}">'
                f'<span class="tb-ph-label">{html.escape(p.name)} <em>[{html.escape(p.source)}]</em></span>'
                f'<span class="tb-ph-track"><b style="left:{left:.3f}%;width:{width:.3f}%;'
                f'background:{colour(p.source)}">{ticks}</b></span>'
                f'<span class="tb-ph-ms">{p.duration_ms:.1f}</span></div>')
        notes = "".join(f"<div class='tb-wf-note'>{html.escape(n)}</div>" for n in w.notes)
        cols.append(f'<div class="tb-wf" data-label="{html.escape(w.label)}" data-total-ms="{w.total_ms:.4f}" '
                    f'data-nonce="{nonce}">'
                    f'<div class="tb-wf-title"><b>{html.escape(w.label)}</b> -- served E2E {w.total_ms:.1f} ms '
                    f'(axis 0-{axis:.0f} ms, shared)</div>{"".join(rows)}{notes}</div>')
    return f'<div class="tb-wfs">{"".join(cols)}</div>'


CSS = """
.tb-wfs {display: flex; gap: 16px; flex-wrap: wrap}
.tb-wf {flex: 1 1 420px; font-size: 0.8em}
.tb-phase {display: flex; align-items: center; gap: 6px; height: 18px}
.tb-ph-label {width: 46%; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; text-align: right}
.tb-ph-label em {color: #666; font-style: normal}
.tb-ph-track {position: relative; flex: 1; height: 12px; background: #f3f3f3}
.tb-ph-track b {position: absolute; top: 0; height: 12px}
.tb-ph-track i {position: absolute; top: 0; width: 1px; height: 12px; background: #000}
.tb-ph-ms {width: 52px; text-align: right; font-family: ui-monospace, monospace}
.tb-wf-note {color: #666}
"""
