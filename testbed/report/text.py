"""Plain-text / Markdown rendering of records and summaries (no computation of its own)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from testbed.metrics import summary as S
from testbed.metrics.records import RequestRecord


def fmt_ms(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def request_line(rec: RequestRecord) -> str:
    """One line of timings for one request, as the CLI prints it."""
    if not rec.ok:
        return f"  [failed: {rec.error}]"
    parts = [f"ttft {fmt_ms(S.ttft_ms(rec))} ms", f"tpot {fmt_ms(S.tpot_ms(rec), 2)} ms",
             f"e2e {fmt_ms(S.e2e_ms(rec))} ms", f"{rec.n_out} tokens"]
    enc = S.encoder_ms(rec)
    if enc is not None:
        parts.append(f"encoder {fmt_ms(enc, 2)} ms")
    return "  [" + " | ".join(parts) + "]"


LATENCY_ROWS = (
    ("TTFT (ms)", S.ttft_ms),
    ("TPOT (ms)", S.tpot_ms),
    ("E2E (ms)", S.e2e_ms),
    ("encoder (ms)", S.encoder_ms),
)


def latency_table(records: Sequence[RequestRecord]) -> str:
    """Markdown table: n, mean, p50, p90, p95, p99 of TTFT, TPOT, E2E and encoder time."""
    live = [r for r in records if r.ok and not r.warmup and r.chunk_ns]
    lines = ["| metric | n | mean | p50 | p90 | p95 | p99 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, fn in LATENCY_ROWS:
        vals = [v for v in (fn(r) for r in live) if v is not None]
        p = S.percentiles(vals)
        if label.startswith("encoder") and not vals:
            continue
        lines.append(
            f"| {label} | {len(vals)} | {fmt_ms(p.get('mean'), 2)} | {fmt_ms(p.get('p50'), 2)} | "
            f"{fmt_ms(p.get('p90'), 2)} | {fmt_ms(p.get('p95'), 2)} | {fmt_ms(p.get('p99'), 2)} |"
        )
    return "\n".join(lines)


def kv_table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "|---|---|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {v} |")
    return "\n".join(lines)
