"""Render a sweep's run directory from its ``results.jsonl``: ``report.md``, ``results.csv``, ``pareto.png``.

Nothing is measured or scored here: every number comes from the rows the runner wrote, so
``testbed report DIR`` re-renders a finished or an interrupted sweep.  Order of the table: the
configurations that pass the gate, fastest p90 E2E first (the best passing configuration heads
the table), then the measured ones that fail the gate (or cannot be gated); configurations that
failed or were skipped are listed under the table with their error.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testbed.errors import TestbedError
from testbed.eval.gate import pareto_front
from testbed.io import write_text_atomic
from testbed.metrics.summary import PERCENTILE_METHOD
from testbed.report.plots import save_figure

Row = dict[str, Any]


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def bleu_of(row: Row) -> float | None:
    """The BLEU the gate and the plot use: against the references, or against fp32 when there are none."""
    vs_refs = _get(row, "accuracy", "vs_references")
    if vs_refs:
        return vs_refs.get("bleu")  # type: ignore[no-any-return]
    return _get(row, "accuracy", "vs_fp32", "bleu")


def latency_of(row: Row) -> float | None:
    return _get(row, "singlestream", "p90_e2el_ms")


def order_rows(rows: Sequence[Row]) -> tuple[list[Row], list[Row]]:
    """(measured rows: passing fastest first, then the rest fastest first; failed/skipped rows)."""
    inf = float("inf")
    measured = [r for r in rows if r.get("status") == "ok"]
    measured.sort(key=lambda r: (_get(r, "gate", "passed") is not True, latency_of(r) or inf))
    rest = [r for r in rows if r.get("status") != "ok"]
    rest.sort(key=lambda r: (r.get("status") != "failed", r.get("label", "")))
    return measured, rest


def _f(v: Any, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def _gate_cell(r: Row) -> str:
    g = r.get("gate") or {}
    if r.get("is_reference"):
        return "reference"
    margin = g.get("bleu_margin")
    m = f" ({margin:+.2f})" if margin is not None else ""
    return {True: "pass", False: "**FAIL**", None: "n/a"}[g.get("passed")] + m


def _diff_cell(r: Row) -> str:
    d = _get(r, "accuracy", "bleu_diff")
    if not d:
        return "n/a"
    ci = d.get("ci95")
    return f"{d['diff']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")


HEADER = ("| # | configuration | gate (BLEU margin) | BLEU | ΔBLEU vs fp32 [95% CI] | % of fp32 | chrF "
          "| BLEU / chrF vs fp32 output | length ratio | p50 / p90 E2E ms | p90 TTFT ms | p50 TPOT ms "
          "| offline sent/s | offline tok/s | load s |")
ALIGN = "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"


def table(rows: Sequence[Row]) -> str:
    lines = [HEADER, ALIGN]
    for i, r in enumerate(rows, 1):
        ss, off = r.get("singlestream") or {}, r.get("offline") or {}
        acc, g = r.get("accuracy") or {}, r.get("gate") or {}
        fid = acc.get("vs_fp32") or {}
        load = r.get("load_ms")
        lines.append(
            f"| {i} | `{r['label']}` | {_gate_cell(r)} | {_f(bleu_of(r))} | {_diff_cell(r)} "
            f"| {_f(g.get('bleu_pct_of_fp32'), '.1f')} | {_f(_get(acc, 'vs_references', 'chrf'))} "
            f"| {_f(fid.get('bleu'))} / {_f(fid.get('chrf'))} | {_f(acc.get('length_ratio'), '.3f')} "
            f"| {_f(ss.get('median_e2el_ms'), '.1f')} / {_f(ss.get('p90_e2el_ms'), '.1f')} "
            f"| {_f(ss.get('p90_ttft_ms'), '.1f')} | {_f(ss.get('median_tpot_ms'))} "
            f"| {_f(off.get('sentences_per_s'), '.1f')} | {_f(off.get('tokens_per_s'), '.0f')} "
            f"| {_f(load / 1e3 if load is not None else None, '.1f')} |")
    return "\n".join(lines)


def markdown(rows: Sequence[Row], meta: dict[str, Any] | None = None, plot: str | None = None) -> str:
    measured, rest = order_rows(rows)
    meta = meta or {}
    st = meta.get("settings") or {}
    sig: dict[str, Any] = next((r["signature"] for r in [*measured, *rows] if r.get("signature")), {})
    out = [f"# Sweep `{meta.get('name') or (rows[0].get('sweep') if rows else '?')}`: BLEU vs latency", ""]
    if meta.get("description"):
        out += [meta["description"], ""]
    if st:
        ref = st.get("reference", {})
        out += [
            f"* model: `{sig.get('model_id') or st.get('model')}`; test set: `{st.get('dataset')}` "
            f"(sha256 {st.get('dataset_sha256')}); decoding: greedy, max_new_tokens {st.get('max_new_tokens')}, "
            "identical for every row",
            "* **BLEU / chrF / length ratio / gate**: on the Offline outputs of the first "
            f"{st.get('offline_examples')} examples (the same set for every configuration), against the "
            "references and against the fp32 "
            f"reference's outputs (`{ref.get('engine')}/{ref.get('precision')}`, batch {ref.get('batch')})",
            f"* **Offline**: those {st.get('offline_examples')} examples, in batches of the row's batch size, "
            "sorted by source length -> sentences/s, output tokens/s",
            f"* **SingleStream**: the first {st.get('singlestream_requests')} examples one at a time after "
            f"{st.get('warmup')} warm-up requests (excluded) -> TTFT / TPOT / E2E; percentiles "
            f"{PERCENTILE_METHOD}; TTFT = first token - start, TPOT = (last - first) / (N - 1), "
            "E2E = last token - start",
            f"* gate: BLEU >= {st.get('gate_bleu_ratio')} x BLEU(fp32) and length ratio sum(N)/sum(N_fp32) in "
            f"{st.get('gate_length_ratio')}; margin = BLEU - threshold; ΔBLEU interval: paired bootstrap, "
            f"{st.get('bootstrap_samples')} samples, seed {st.get('seed')}",
        ]
    bsig = next((_get(r, "accuracy", "vs_references", "bleu_signature") for r in measured
                 if _get(r, "accuracy", "vs_references")), None)
    csig = next((_get(r, "accuracy", "vs_references", "chrf_signature") for r in measured
                 if _get(r, "accuracy", "vs_references")), None)
    if bsig:
        out.append(f"* sacreBLEU: `{bsig}`; chrF: `{csig}`")
    if sig:
        m = sig.get("machine") or {}
        vers = ", ".join(f"{k} {v}" for k, v in (sig.get("versions") or {}).items())
        out.append(f"* machine: {m.get('cpu')} x{m.get('cores')}, Python {m.get('python')}; git {sig.get('git_sha')}; "
                   f"{vers}")
    out += ["", table(measured) if measured else "_No configuration was measured._", ""]
    passing = [r for r in measured if _get(r, "gate", "passed") is True and not r.get("is_reference")]
    if passing:
        b = passing[0]
        line = (f"Best passing configuration: `{b['label']}` (p90 E2E {_f(latency_of(b), '.1f')} ms, "
                f"BLEU {_f(bleu_of(b))}).")
        ref = next((r for r in measured if r.get("is_reference")), None)
        ref_lat, b_lat = (latency_of(ref) if ref else None), latency_of(b)
        if ref is not None and ref_lat is not None and b_lat is not None and b_lat >= ref_lat:
            line += (f"  It is not faster than the fp32 reference `{ref['label']}` (p90 E2E {ref_lat:.1f} ms): "
                     "no configuration here buys latency at the accuracy the gate asks.")
        out.append(line)
    elif measured:
        out.append("No optimised configuration passes the gate.")
    if plot:
        out += ["", f"Pareto plot (p90 E2E vs BLEU): `{plot}`"]
    gate_fail = [r for r in measured if _get(r, "gate", "passed") is not True]
    if gate_fail or rest:
        out += ["", "## Failures", ""]
        for r in gate_fail:
            reasons = "; ".join(_get(r, "gate", "reasons") or []) or "not gated"
            out.append(f"* gate {'failed' if _get(r, 'gate', 'passed') is False else 'undecided'}: "
                       f"`{r['label']}`: {reasons}")
        for r in rest:
            out.append(f"* {r.get('status')}: `{r.get('label')}`: {r.get('error')}")
    return "\n".join(out) + "\n"


CSV_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("label", ("label",)), ("status", ("status",)), ("engine", ("config", "engine")),
    ("precision", ("config", "precision")), ("pruning", ("config", "pruning")), ("device", ("config", "device")),
    ("threads", ("config", "threads")), ("batch", ("config", "batch")), ("is_reference", ("is_reference",)),
    ("gate_passed", ("gate", "passed")), ("bleu", ("accuracy", "vs_references", "bleu")),
    ("bleu_fp32", ("gate", "bleu_fp32")), ("bleu_threshold", ("gate", "bleu_threshold")),
    ("bleu_margin", ("gate", "bleu_margin")), ("bleu_pct_of_fp32", ("gate", "bleu_pct_of_fp32")),
    ("bleu_diff", ("accuracy", "bleu_diff", "diff")), ("chrf", ("accuracy", "vs_references", "chrf")),
    ("bleu_vs_fp32", ("accuracy", "vs_fp32", "bleu")), ("chrf_vs_fp32", ("accuracy", "vs_fp32", "chrf")),
    ("length_ratio", ("accuracy", "length_ratio")), ("length_margin", ("gate", "length_margin")),
    ("ss_completed", ("singlestream", "completed")), ("ss_failed", ("singlestream", "failed")),
    ("p50_ttft_ms", ("singlestream", "median_ttft_ms")), ("p90_ttft_ms", ("singlestream", "p90_ttft_ms")),
    ("p99_ttft_ms", ("singlestream", "p99_ttft_ms")), ("p50_tpot_ms", ("singlestream", "median_tpot_ms")),
    ("p90_tpot_ms", ("singlestream", "p90_tpot_ms")), ("p50_e2e_ms", ("singlestream", "median_e2el_ms")),
    ("p90_e2e_ms", ("singlestream", "p90_e2el_ms")), ("p99_e2e_ms", ("singlestream", "p99_e2el_ms")),
    ("p50_encoder_ms", ("singlestream", "median_encoder_ms")),
    ("offline_n", ("offline", "n")), ("offline_sentences_per_s", ("offline", "sentences_per_s")),
    ("offline_tokens_per_s", ("offline", "tokens_per_s")), ("load_ms", ("load_ms",)), ("error", ("error",)),
    ("model_id", ("signature", "model_id")), ("git_sha", ("signature", "git_sha")), ("key", ("key",)),
)


def csv_text(rows: Sequence[Row]) -> str:
    measured, rest = order_rows(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([name for name, _ in CSV_COLUMNS])
    for r in [*measured, *rest]:
        w.writerow(["" if (v := _get(r, *path)) is None else v for _, path in CSV_COLUMNS])
    return buf.getvalue()


def pareto_plot(rows: Sequence[Row], path: Path, title: str = "") -> Path | None:
    """p90 E2E (SingleStream) vs BLEU, one point per measured configuration; frontier drawn; gate failures marked."""
    pts = [r for r in rows if r.get("status") == "ok" and latency_of(r) is not None and bleu_of(r) is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = [(float(latency_of(r)), float(bleu_of(r))) for r in pts]  # type: ignore[arg-type]
    front = pareto_front(xy)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    fx, fy = [xy[i][0] for i in front], [xy[i][1] for i in front]
    ax.step(fx, fy, where="post", color="tab:blue", lw=1.2, alpha=0.6, label="Pareto frontier")
    drawn: set[str] = set()
    for r, (x, y) in zip(pts, xy):
        passed = _get(r, "gate", "passed")
        if r.get("is_reference"):
            style, name = dict(marker="*", s=180, color="black"), "fp32 reference"
        elif passed is True:
            style, name = dict(marker="o", s=60, color="tab:green"), "passes the gate"
        else:
            style, name = dict(marker="X", s=80, color="tab:red"), "fails the gate"
        ax.scatter([x], [y], zorder=3, label=None if name in drawn else name, **style)  # type: ignore[arg-type]
        drawn.add(name)
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ref = next((r for r in pts if r.get("is_reference")), None)
    thr = _get(ref, "gate", "bleu_threshold") if ref else None
    if thr is not None:
        ax.axhline(thr, color="tab:red", ls=":", lw=1, label=f"gate: BLEU {thr:.2f}")
    ax.set_xlabel("SingleStream p90 E2E latency (ms)  (lower is better)")
    ax.set_ylabel("BLEU  (higher is better)")
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.12)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def render_dir(out_dir: Path) -> dict[str, Path | None]:
    """(Re)write report.md, results.csv and pareto.png from ``out_dir/results.jsonl``."""
    from testbed.eval.runner import read_rows

    if not (out_dir / "results.jsonl").is_file():
        raise TestbedError(f"{out_dir}: no results.jsonl here (run `testbed eval --sweep FILE --out {out_dir}`)")
    rows = read_rows(out_dir)
    meta_path = out_dir / "sweep.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    name = meta.get("name") or "sweep"
    plot = pareto_plot(rows, out_dir / "pareto.png", title=f"{name}: {meta.get('settings', {}).get('model', '')}")
    write_text_atomic(out_dir / "results.csv", csv_text(rows))
    write_text_atomic(out_dir / "report.md", markdown(rows, meta, plot=str(plot) if plot else None))
    return {"report": out_dir / "report.md", "csv": out_dir / "results.csv", "plot": plot}
