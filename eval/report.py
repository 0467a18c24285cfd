"""Render a sweep's run directory from its ``results.jsonl``: ``report.md``, ``results.csv``, ``pareto.png``.

Nothing is measured or scored here: every number comes from the rows the runner wrote, so
``testbed report DIR`` re-renders a finished or an interrupted sweep (latency of rows whose
SingleStream rounds are unfinished reads "pending").  The report starts with the result header
of the session that ran it (command, date, CPU and ISA, load average, git SHA, versions) and
says how each scenario was measured.  Order of the table: the configurations whose verdict is
pass, fastest p90 E2E first (the best passing configuration heads the table), then those within
noise, then those that fail the gate (or cannot be gated); configurations that failed or were
skipped are listed under the table with their error.
"""

from __future__ import annotations

import csv
import io
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
        if isinstance(d, list) and p.isdigit():
            d = d[int(p)] if int(p) < len(d) else None
        elif isinstance(d, dict):
            d = d.get(p)
        else:
            return None
    return d


def bleu_of(row: Row) -> float | None:
    """The BLEU the gate and the plot use: against the references, or against fp32 when there are none."""
    vs_refs = _get(row, "accuracy", "vs_references")
    if vs_refs:
        return vs_refs.get("bleu")  # type: ignore[no-any-return]
    return _get(row, "accuracy", "vs_fp32", "bleu")


def latency_of(row: Row) -> float | None:
    return _get(row, "singlestream", "p90_e2el_ms")


def gate_score_of(row: Row) -> float | None:
    """The gate metric's score (BLEU vs references, or chrF / BLEU vs the fp32 outputs); else BLEU."""
    v = _get(row, "gate", "score")
    return v if v is not None else bleu_of(row)


VERDICT_RANK = {"pass": 0, "within noise": 1, "fail": 2}


def verdict_of(row: Row) -> str | None:
    g = row.get("gate") or {}
    if "verdict" in g:
        return g["verdict"]  # type: ignore[no-any-return]
    return {True: "pass", False: "fail", None: None}[g.get("passed")]  # rows written before verdicts


def order_rows(rows: Sequence[Row]) -> tuple[list[Row], list[Row]]:
    """(measured rows: pass, then within noise, then fail / undecided, each fastest first; failed/skipped rows)."""
    inf = float("inf")
    measured = [r for r in rows if r.get("status") == "ok"]
    measured.sort(key=lambda r: (VERDICT_RANK.get(verdict_of(r) or "", 3), latency_of(r) or inf))
    rest = [r for r in rows if r.get("status") != "ok"]
    rest.sort(key=lambda r: (r.get("status") != "failed", r.get("label", "")))
    return measured, rest


def _f(v: Any, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def _gate_cell(r: Row) -> str:
    g = r.get("gate") or {}
    if r.get("is_reference"):
        return "reference"
    margin = g.get("margin", g.get("bleu_margin"))
    m = f" ({margin:+.2f})" if margin is not None else ""
    return {"pass": "pass", "fail": "**FAIL**", "within noise": "**within noise**", None: "n/a"}[verdict_of(r)] + m


def _diff_cell(r: Row) -> str:
    d = _get(r, "accuracy", "gate_diff") or _get(r, "accuracy", "bleu_diff")
    if not d:
        return "n/a"
    ci = d.get("ci95")
    return f"{d['diff']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")


def _divergence_cells(r: Row) -> str:
    b = r.get("batch1") or {}
    div = b.get("batch_divergence")
    if div is None:
        return "n/a | n/a"
    b1, bb = _get(b, "at_batch1", "bleu"), _get(b, "at_batch", "bleu")
    return (f"{100 * div:.1f}% ({b.get('differing')}/{b.get('n')} at b{b.get('batch')}) "
            f"| {_f(b1)} / {_f(bb)}")


def _latency_cells(r: Row) -> str:
    ss = r.get("singlestream")
    if not ss:
        return "pending | pending | pending"
    return (f"{_f(ss.get('median_e2el_ms'), '.1f')} / {_f(ss.get('p90_e2el_ms'), '.1f')} "
            f"| {_f(ss.get('p90_ttft_ms'), '.1f')} | {_f(ss.get('median_tpot_ms'))}")


def header_row(metric: str = "BLEU") -> str:
    return ("| # | configuration | verdict (margin) | BLEU | "
            f"\u0394{metric} vs fp32 [95% CI] | % of fp32 | chrF | BLEU / chrF vs fp32 output "
            "| exact match vs fp32 | batch divergence | BLEU at b1 / at row's batch | length ratio "
            "| p50 / p90 E2E ms | p90 TTFT ms | p50 TPOT ms | offline sent/s | offline tok/s | load s |")


ALIGN = "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"


def table(rows: Sequence[Row], metric: str = "BLEU") -> str:
    lines = [header_row(metric), ALIGN]
    for i, r in enumerate(rows, 1):
        off, acc, g = r.get("offline") or {}, r.get("accuracy") or {}, r.get("gate") or {}
        fid = acc.get("vs_fp32") or {}
        load, em = r.get("load_ms"), acc.get("exact_match_vs_fp32")
        lines.append(
            f"| {i} | `{r['label']}` | {_gate_cell(r)} | {_f(bleu_of(r))} | {_diff_cell(r)} "
            f"| {_f(g.get('pct_of_fp32', g.get('bleu_pct_of_fp32')), '.1f')} "
            f"| {_f(_get(acc, 'vs_references', 'chrf'))} "
            f"| {_f(fid.get('bleu'))} / {_f(fid.get('chrf'))} | {_f(100 * em if em is not None else None, '.1f')}% "
            f"| {_divergence_cells(r)} | {_f(acc.get('length_ratio'), '.3f')} | {_latency_cells(r)} "
            f"| {_f(off.get('sentences_per_s'), '.1f')} | {_f(off.get('tokens_per_s'), '.0f')} "
            f"| {_f(load / 1e3 if load is not None else None, '.1f')} |")
    return "\n".join(lines)


def _session_lines(meta: dict[str, Any]) -> list[str]:
    """The result header of the first session; one line per resume; the load at each session's end."""
    sessions = meta.get("sessions") or []
    if not sessions:
        return []
    out = [sessions[0].get("header", "").rstrip("\n")]
    for s in sessions[1:]:
        out.append(f"- resumed {s.get('started_at')}: `{s.get('command')}`, load average (1 min) at start "
                   f"{_f(s.get('load1_start'))}")
    ends = ", ".join(_f(s.get("load1_end")) for s in sessions)
    out.append(f"- load average (1 min) at the end of each session: {ends} (the machine is shared: see the load "
               "columns of results.csv and the ranges below)")
    out += [f"- **warning**: {w}" for w in dict.fromkeys(s["warning"] for s in sessions if s.get("warning"))]
    walls = ", ".join(_wall(s) for s in sessions)
    out.append(f"- wall time of each session (engine loads and artefact builds included): {walls}")
    return [*out, ""]


def _wall(session: dict[str, Any]) -> str:
    import datetime as _dt

    try:
        t0, t1 = (_dt.datetime.fromisoformat(session[k]) for k in ("started_at", "finished_at"))
    except (KeyError, TypeError, ValueError):
        return "n/a (unfinished)"
    return f"{(t1 - t0).total_seconds():.0f} s"


def _method_lines(st: dict[str, Any], sig: dict[str, Any], rows: Sequence[Row]) -> list[str]:
    ref = st.get("reference", {})
    metric = {"bleu": "BLEU", "chrf": "chrF"}.get(st.get("gate_metric", "bleu"), "BLEU")
    against = st.get("gate_reference", "references")
    target = ("the references" if against == "references"
              else "the fp32 reference's outputs (which score 100 against themselves; MLPerf's LLM tasks)")
    interleave = st.get("interleave", False)
    ss_how = (f"**interleaved**: every engine loaded once and kept; {st.get('warmup')} warm-up rounds (excluded), "
              f"then {st.get('singlestream_requests')} rounds; round j sends example j once to every configuration, "
              "one request at a time, the order rotated by one position per round, so every configuration runs "
              "in every position and latency ratios are measured under the same conditions"
              if interleave else
              f"**sequential** (`--no-interleave`): each configuration right after its load, "
              f"{st.get('warmup')} warm-up requests (excluded), then {st.get('singlestream_requests')} requests")
    loads = [(_get(r, "singlestream", "load1_min"), _get(r, "singlestream", "load1_max")) for r in rows]
    lo = min((a for a, _ in loads if a is not None), default=None)
    hi = max((b for _, b in loads if b is not None), default=None)
    return [
        f"* model: `{sig.get('model_id') or st.get('model')}`; test set: `{st.get('dataset')}` "
        f"(sha256 {st.get('dataset_sha256')}); decoding: greedy, max_new_tokens {st.get('max_new_tokens')}, "
        "identical for every row",
        f"* **accuracy and the gate**: on the Offline outputs of the first {st.get('offline_examples')} examples "
        "(the same set for every configuration), against the references and against the fp32 reference's "
        f"outputs (`{ref.get('engine')}/{ref.get('precision')}`, batch {ref.get('batch')}); unrounded scores",
        f"* gate: {metric} against {target} >= {st.get('gate_ratio', st.get('gate_bleu_ratio'))} x fp32's, and "
        f"length ratio sum(N)/sum(N_fp32) in {st.get('gate_length_ratio')}; margin = score - threshold.  "
        f"**Verdict** from the paired-bootstrap 95% interval of \u0394{metric} = {metric} - {metric}(fp32) "
        f"({st.get('bootstrap_samples')} samples, seed {st.get('seed')}): pass if the whole interval lies at or "
        "above the threshold, fail if below it (or the length ratio is outside), **within noise** if it "
        "straddles the threshold (this test set cannot tell)",
        f"* **Offline**: {st.get('offline_warmup_batches', 0)} warm-up batch(es) of the row's batch size run first "
        f"and excluded (time in results.jsonl), then the {st.get('offline_examples')} examples in batches of the "
        "row's batch size, sorted by source length -> sentences/s, output tokens/s",
        f"* **batch divergence**: the first {st.get('divergence_examples', 0)} examples decoded again one at a time "
        "(batch 1, the same `generate` path): the fraction whose token ids differ from the row's batch, with "
        f"the BLEU of both against {'the references' if against == 'references' else 'the fp32 outputs'}",
        f"* **SingleStream**: the first {st.get('singlestream_requests')} examples, {ss_how} -> TTFT / TPOT / E2E; "
        f"percentiles {PERCENTILE_METHOD}; TTFT = first token - start, TPOT = (last - first) / (N - 1), "
        f"E2E = last token - start.  Load average (1 min) during the rounds: {_f(lo)} to {_f(hi)}",
    ]


def markdown(rows: Sequence[Row], meta: dict[str, Any] | None = None, plot: str | None = None) -> str:
    measured, rest = order_rows(rows)
    meta = meta or {}
    st = meta.get("settings") or {}
    sig: dict[str, Any] = next((r["signature"] for r in [*measured, *rows] if r.get("signature")), {})
    out = _session_lines(meta)
    out += [f"# Sweep `{meta.get('name') or (rows[0].get('sweep') if rows else '?')}`: accuracy vs latency", ""]
    if meta.get("description"):
        out += [meta["description"], ""]
    if st:
        out += _method_lines(st, sig, measured)
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
    metric = {"bleu": "BLEU", "chrf": "chrF"}.get(st.get("gate_metric", "bleu"), "BLEU")
    out += ["", table(measured, metric) if measured else "_No configuration was measured._", ""]
    out += _verdict_lines(measured)
    if plot:
        out += ["", f"Pareto plot (p90 E2E vs {metric}): `{plot}`"]
    out += _failure_lines(measured, rest)
    return "\n".join(out) + "\n"


def _verdict_lines(measured: Sequence[Row]) -> list[str]:
    passing = [r for r in measured if verdict_of(r) == "pass" and not r.get("is_reference")]
    ref = next((r for r in measured if r.get("is_reference")), None)
    ref_lat = latency_of(ref) if ref else None
    out: list[str] = []
    if passing:
        b = passing[0]
        g = b.get("gate") or {}
        what = "BLEU" if g.get("against", "references") == "references" else f"{g.get('metric')} vs fp32"
        line = (f"Best passing configuration: `{b['label']}` (p90 E2E {_f(latency_of(b), '.1f')} ms, "
                f"{what} {_f(gate_score_of(b))}).")
        b_lat = latency_of(b)
        if ref is not None and ref_lat is not None and b_lat is not None and b_lat >= ref_lat:
            line += (f"  It is not faster than the fp32 reference `{ref['label']}` (p90 E2E {ref_lat:.1f} ms): "
                     "no configuration here buys latency at the accuracy the gate asks.")
        out.append(line)
    elif measured:
        out.append("No optimised configuration passes the gate.")
    best_lat = latency_of(passing[0]) if passing else ref_lat
    noisy = [r for r in measured if verdict_of(r) == "within noise"
             and (best_lat is None or (latency_of(r) or float("inf")) < best_lat)]
    if noisy:
        out.append("Faster, but within noise (this test set cannot tell whether they pass): "
                   + ", ".join(f"`{r['label']}` (p90 E2E {_f(latency_of(r), '.1f')} ms)" for r in noisy) + ".")
    return out


def _failure_lines(measured: Sequence[Row], rest: Sequence[Row]) -> list[str]:
    gated = [r for r in measured if verdict_of(r) != "pass"]
    if not gated and not rest and not any(r.get("singlestream_error") for r in measured):
        return []
    out = ["", "## Failures, verdicts within noise, and skipped configurations", ""]
    word = {"fail": "gate failed", "within noise": "within noise", None: "gate undecided"}
    for r in gated:
        reasons = "; ".join(_get(r, "gate", "reasons") or []) or "not gated"
        out.append(f"* {word.get(verdict_of(r), 'gate undecided')}: `{r['label']}`: {reasons}")
    for r in measured:
        if r.get("singlestream_error"):
            out.append(f"* SingleStream not measured: `{r['label']}`: {r['singlestream_error']}")
    for r in rest:
        out.append(f"* {r.get('status')}: `{r.get('label')}`: {r.get('error')}")
    return out


CSV_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("label", ("label",)), ("status", ("status",)), ("engine", ("config", "engine")),
    ("precision", ("config", "precision")), ("pruning", ("config", "pruning")), ("device", ("config", "device")),
    ("threads", ("config", "threads")), ("batch", ("config", "batch")), ("is_reference", ("is_reference",)),
    ("verdict", ("gate", "verdict")), ("gate_passed_point", ("gate", "passed")), ("gate_metric", ("gate", "metric")),
    ("gate_against", ("gate", "against")), ("gate_score", ("gate", "score")),
    ("gate_score_fp32", ("gate", "score_fp32")), ("gate_threshold", ("gate", "threshold")),
    ("gate_margin", ("gate", "margin")), ("gate_pct_of_fp32", ("gate", "pct_of_fp32")),
    ("gate_diff", ("accuracy", "gate_diff", "diff")), ("gate_diff_threshold", ("gate", "diff_threshold")),
    ("gate_diff_ci_low", ("gate", "interval", "0")), ("gate_diff_ci_high", ("gate", "interval", "1")),
    ("bleu", ("accuracy", "vs_references", "bleu")), ("chrf", ("accuracy", "vs_references", "chrf")),
    ("bleu_vs_fp32", ("accuracy", "vs_fp32", "bleu")), ("chrf_vs_fp32", ("accuracy", "vs_fp32", "chrf")),
    ("exact_match_vs_fp32", ("accuracy", "exact_match_vs_fp32")),
    ("batch_divergence", ("batch1", "batch_divergence")), ("divergence_n", ("batch1", "n")),
    ("bleu_batch1", ("batch1", "at_batch1", "bleu")), ("bleu_at_batch", ("batch1", "at_batch", "bleu")),
    ("length_ratio", ("accuracy", "length_ratio")), ("length_margin", ("gate", "length_margin")),
    ("ss_method", ("singlestream", "method")), ("ss_completed", ("singlestream", "completed")),
    ("ss_failed", ("singlestream", "failed")), ("ss_sessions", ("singlestream", "sessions")),
    ("p50_ttft_ms", ("singlestream", "median_ttft_ms")), ("p90_ttft_ms", ("singlestream", "p90_ttft_ms")),
    ("p99_ttft_ms", ("singlestream", "p99_ttft_ms")), ("p50_tpot_ms", ("singlestream", "median_tpot_ms")),
    ("p90_tpot_ms", ("singlestream", "p90_tpot_ms")), ("p50_e2e_ms", ("singlestream", "median_e2el_ms")),
    ("p90_e2e_ms", ("singlestream", "p90_e2el_ms")), ("p99_e2e_ms", ("singlestream", "p99_e2el_ms")),
    ("p50_encoder_ms", ("singlestream", "median_encoder_ms")),
    ("ss_load1_min", ("singlestream", "load1_min")), ("ss_load1_max", ("singlestream", "load1_max")),
    ("offline_n", ("offline", "n")), ("offline_sentences_per_s", ("offline", "sentences_per_s")),
    ("offline_tokens_per_s", ("offline", "tokens_per_s")), ("offline_warmup_s", ("offline", "warmup_s")),
    ("offline_load1_start", ("offline", "load1_start")), ("offline_load1_end", ("offline", "load1_end")),
    ("load_ms", ("load_ms",)), ("error", ("error",)),
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
    """p90 E2E (SingleStream) vs the gate's score, one point per measured configuration; frontier drawn;
    verdicts marked (pass, within noise, fail)."""
    pts = [r for r in rows if r.get("status") == "ok" and latency_of(r) is not None and gate_score_of(r) is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = [(float(latency_of(r)), float(gate_score_of(r))) for r in pts]  # type: ignore[arg-type]
    g0 = next((r.get("gate") or {} for r in pts if (r.get("gate") or {}).get("metric")), {})
    ylabel = f"{g0.get('metric', 'BLEU')} vs {'fp32 outputs' if g0.get('against') == 'fp32' else 'references'}"
    front = pareto_front(xy)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    fx, fy = [xy[i][0] for i in front], [xy[i][1] for i in front]
    ax.step(fx, fy, where="post", color="tab:blue", lw=1.2, alpha=0.6, label="Pareto frontier")
    drawn: set[str] = set()
    for r, (x, y) in zip(pts, xy):
        v = verdict_of(r)
        if r.get("is_reference"):
            style, name = dict(marker="*", s=180, color="black"), "fp32 reference"
        elif v == "pass":
            style, name = dict(marker="o", s=60, color="tab:green"), "passes the gate"
        elif v == "within noise":
            style, name = dict(marker="D", s=60, color="tab:orange"), "within noise"
        else:
            style, name = dict(marker="X", s=80, color="tab:red"), "fails the gate (or undecided)"
        ax.scatter([x], [y], zorder=3, label=None if name in drawn else name, **style)  # type: ignore[arg-type]
        drawn.add(name)
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ref = next((r for r in pts if r.get("is_reference")), None)
    thr = _get(ref, "gate", "threshold") if ref else None
    if thr is not None:
        ax.axhline(thr, color="tab:red", ls=":", lw=1, label=f"gate: {ylabel.split()[0]} {thr:.2f}")
    ax.set_xlabel("SingleStream p90 E2E latency (ms)  (lower is better)")
    ax.set_ylabel(f"{ylabel}  (higher is better)")
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.12)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def render_dir(out_dir: Path) -> dict[str, Path | None]:
    """(Re)write report.md, results.csv and pareto.png from ``out_dir/results.jsonl``."""
    from testbed.eval.results import read_meta, read_rows

    if not (out_dir / "results.jsonl").is_file():
        raise TestbedError(f"{out_dir}: no results.jsonl here (run `testbed eval --sweep FILE --out {out_dir}`)")
    rows = read_rows(out_dir)
    meta = read_meta(out_dir)
    name = meta.get("name") or "sweep"
    plot = pareto_plot(rows, out_dir / "pareto.png", title=f"{name}: {meta.get('settings', {}).get('model', '')}")
    write_text_atomic(out_dir / "results.csv", csv_text(rows))
    write_text_atomic(out_dir / "report.md", markdown(rows, meta, plot=str(plot) if plot else None))
    return {"report": out_dir / "report.md", "csv": out_dir / "results.csv", "plot": plot}
