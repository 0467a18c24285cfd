"""The answer panels' HTML: the metrics table (with the data attributes the page's timer and the
tests read: ``data-nonce``, ``data-ntok``, ``data-done``, ``data-engine-ttft-ms``, ``data-ok``), an
error or notice panel, and the served-TTFT line the page fills in."""

from __future__ import annotations

import html

from testbed.metrics import summary as S
from testbed.ui import service as svc


def metrics_html(nonce: str, snap: svc.Snapshot | None, label: str, note: str = "") -> str:
    m = svc.answer_metrics(snap.record if snap else None)
    done = snap is not None and snap.done
    state = "error" if snap is not None and snap.error else ("done" if done else "streaming...")
    cells = [("engine TTFT ms", S.fmt(m["ttft_ms"], ".1f")), ("TPOT ms", S.fmt(m["tpot_ms"], ".2f")),
             ("E2E ms", S.fmt(m["e2e_ms"], ".1f")), ("tokens", str(m["tokens"])),
             ("tok/s", S.fmt(m["tokens_per_s"], ".1f"))]
    if m["encoder_ms"] is not None:
        cells.append(("encoder ms", S.fmt(m["encoder_ms"], ".2f")))
    head = "".join(f"<th>{k}</th>" for k, _ in cells)
    row = "".join(f"<td>{v}</td>" for _, v in cells)
    extra = ""
    if snap is not None:
        for w in snap.warnings:
            extra += f'<div class="tb-warn">notice: {html.escape(w)}</div>'
        if snap.error:
            extra += f'<div class="tb-err">error: {html.escape(snap.error)}</div>'
    if note:
        extra += f"<div>{html.escape(note)}</div>"
    ttft = "" if m["ttft_ms"] is None else f'{m["ttft_ms"]:.3f}'
    return (f'<div class="tb-metrics" data-nonce="{html.escape(nonce)}" data-ntok="{m["tokens"]}" '
            f'data-done="{1 if done else 0}" data-engine-ttft-ms="{ttft}" data-ok="{0 if snap and snap.error else 1}">'
            f"<b>{html.escape(label)}</b> <i>{state}</i>"
            f"<table><tr>{head}</tr><tr>{row}</tr></table>{extra}</div>")


def message_html(nonce: str, label: str, text: str, error: bool = False) -> str:
    cls = "tb-err" if error else "tb-warn"
    return (f'<div class="tb-metrics" data-nonce="{html.escape(nonce)}" data-ntok="0" data-done="1" data-ok="0">'
            f'<b>{html.escape(label)}</b><div class="{cls}">{html.escape(text)}</div></div>')


def served_html(key: str) -> str:
    return f'<div class="tb-served" id="tb-served-{key}-inner">served TTFT (browser): n/a</div>'
