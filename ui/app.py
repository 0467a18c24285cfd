"""The Gradio demo: streaming translation and chat with live latency, two configurations side by
side, a session history, the latest evaluation report and a short load test.

Privacy: it binds 127.0.0.1, never makes a share link, turns Gradio's analytics and version check
off, keeps the Hugging Face hub offline, and uses system fonts (the default theme would fetch
Google Fonts), so the page requests nothing from outside hosts (``tests/integration/test_ui_browser.py``
checks every request the browser makes).

Honest timing -- two TTFTs, both labelled in the page:

* **engine TTFT**: from :class:`testbed.engines.base.Stream` (stream start -> first token id);
* **served TTFT**: measured *in the browser* with ``performance.now()``, from the moment the
  request is sent (the event's ``js`` hook, right before Gradio submits it) to the moment the
  first token is in the page's DOM (a ``MutationObserver`` on the metrics panel).  It includes the
  Gradio queue, the worker thread hand-offs, the SSE transport and the page update; the
  difference is shown as "Gradio overhead".  Never timed through ``gradio_client`` (it polls).

Engine loading is a separate step before the timed request (its time is shown apart), and
configuration B runs after A, so the two never share the CPU.
"""

from __future__ import annotations

import html
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

#: set before Gradio is imported: no telemetry, no version check, no server-side rendering (node)
QUIET_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1",
             "GRADIO_SSR_MODE": "False", "GRADIO_MCP_SERVER": "False"}
#: set by `testbed ui` for its own process only: the demo runs the embedded models, never the hub
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def quiet_environment() -> None:
    os.environ.update(QUIET_ENV)


quiet_environment()

import gradio as gr  # noqa: E402

from testbed.engines.base import GenerationRequest  # noqa: E402
from testbed.metrics import summary as S  # noqa: E402
from testbed.ui import service as svc  # noqa: E402
from testbed.ui.loadtest import SCENARIOS, run_loadtest  # noqa: E402
from testbed.ui.results import latest_run, run_sweep, sweep_files  # noqa: E402

EXAMPLES = [
    "Select the range of cells that you want to sort.",
    "Click OK to close the dialog.",
    "You can insert a picture from a file into the current document.",
]
CHAT_EXAMPLE = "What is a good name for a pet turtle?"

# --- the browser-side timer: performance.now() at send, MutationObserver at first token -------
HEAD_JS = """
<script>
window.tb = window.tb || {runs: {}};
tb.mark = function (key) {
  const nonce = key + "-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 8);
  const run = {key: key, nonce: nonce, t0: performance.now(), ttft: null, e2e: null, n: 0, done: false};
  tb.runs[key] = run;
  const served = document.querySelector("#tb-served-" + key);
  if (served) served.textContent = "served TTFT (browser): waiting...";
  const host = document.querySelector("#tb-metrics-" + key);
  if (!host) return nonce;
  const check = function () {
    const r = tb.runs[key];
    const m = host.querySelector("[data-nonce]");
    if (!r || !m || m.dataset.nonce !== r.nonce) return;
    const now = performance.now();
    const n = parseInt(m.dataset.ntok || "0", 10);
    if (n > 0 && r.ttft === null) r.ttft = now - r.t0;
    if (n > r.n) { r.n = n; r.e2e = now - r.t0; }
    if (m.dataset.done === "1") r.done = true;
    const s = document.querySelector("#tb-served-" + key);
    if (s) s.textContent = "served TTFT (browser, send -> first token on screen): "
        + (r.ttft === null ? "n/a" : r.ttft.toFixed(1) + " ms")
        + (r.e2e === null ? "" : " | served E2E: " + r.e2e.toFixed(1) + " ms");
  };
  if (host.__tbObs) host.__tbObs.disconnect();
  host.__tbObs = new MutationObserver(check);
  host.__tbObs.observe(host, {subtree: true, childList: true, characterData: true, attributes: true});
  return nonce;
};
tb.collect = function () { return JSON.stringify(tb.runs); };
</script>
"""

CSS = """
.tb-metrics table {border-collapse: collapse; font-size: 0.9em}
.tb-metrics td, .tb-metrics th {padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: right}
.tb-warn {color: #a15c00} .tb-err {color: #b00020; font-weight: 600}
.tb-served {font-family: ui-monospace, monospace; font-size: 0.85em; color: #333}
"""

INTRO = """\
# testbed demo
Answers stream token by token.  **engine TTFT** is taken inside the engine
(stream start -> first token id); **served TTFT** is measured by this page
(request sent -> first token on screen), and their difference is the Gradio overhead.
TPOT = (last - first token) / (N - 1), E2E = last token - start, tok/s = N / E2E.
Engine load time is shown apart; configuration B runs after A (they never share the CPU).
"""

PROGRESS = gr.Progress()  # Gradio finds a progress tracker by its default value

_PENDING: OrderedDict[str, svc.HistoryEntry] = OrderedDict()
_PENDING_LOCK = threading.Lock()


def _remember(nonce: str, entry: svc.HistoryEntry) -> None:
    with _PENDING_LOCK:
        _PENDING[nonce] = entry
        while len(_PENDING) > 1000:
            _PENDING.popitem(last=False)


def _take(nonce: str) -> svc.HistoryEntry | None:
    with _PENDING_LOCK:
        return _PENDING.pop(nonce, None)


# ------------------------------------------------------------------ rendering
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
    return (f'<div class="tb-metrics" data-nonce="{html.escape(nonce)}" data-ntok="0" data-done="1">'
            f'<b>{html.escape(label)}</b><div class="{cls}">{html.escape(text)}</div></div>')


def served_html(key: str) -> str:
    return f'<div class="tb-served" id="tb-served-{key}-inner">served TTFT (browser): n/a</div>'


# ------------------------------------------------------------------ pickers
class Pickers:
    """engine / precision / pruning / threads (/ device when CUDA is there) of one configuration."""

    def __init__(self, title: str, elem_id: str, visible: bool = True, default_engine: str = "torch") -> None:
        opts = svc.engine_options()
        labels = [o.label for o in opts]
        default = next((o.label for o in opts if o.name == default_engine and o.available),
                       next((o.label for o in opts if o.available), labels[0]))
        name = svc.engine_of_label(default)
        devs = svc.devices()
        with gr.Column(visible=visible, elem_id=elem_id) as self.column, gr.Row(equal_height=True):
            gr.Markdown(f"**{title}**", min_height=0)
            self.engine = gr.Dropdown(labels, value=default, label="engine",
                                      info="unavailable engines are listed with the reason")
            self.device = gr.Dropdown(devs, value="cpu", label="device", visible=len(devs) > 1)
            precs = svc.precision_choices(name)
            self.precision = gr.Dropdown(precs, value=precs[0] if precs else None, label="precision")
            self.pruning = gr.Dropdown(svc.pruning_choices(name), value="none", label="pruning")
            self.threads = gr.Dropdown(svc.thread_choices(), value="default", label="threads")
            self.notice = gr.Markdown(self._notice(default))
        self.engine.change(self._on_engine, [self.engine, self.device],
                           [self.precision, self.pruning, self.notice])
        self.device.change(self._on_engine, [self.engine, self.device],
                           [self.precision, self.pruning, self.notice])

    @staticmethod
    def _notice(label: str) -> str:
        why = svc.unavailable_reason(label)
        return f"**disabled** -- {why}" if why else ""

    def _on_engine(self, label: str, device: str) -> tuple[Any, Any, str]:
        name = svc.engine_of_label(label)
        precs = svc.precision_choices(name, device or "cpu")
        prun = svc.pruning_choices(name)
        return (gr.update(choices=precs, value=precs[0] if precs else None, interactive=bool(precs)),
                gr.update(choices=prun, value="none", interactive=len(prun) > 1), self._notice(label))

    @property
    def inputs(self) -> list[Any]:
        return [self.engine, self.precision, self.pruning, self.threads, self.device]


def _config(task: str, engine: str, precision: str, pruning: str, threads: str, device: str) -> Any:
    return svc.make_config(task, engine, precision, pruning, threads, device)


# ------------------------------------------------------------------ the app
def build_app(cache: svc.EngineCache | None = None, runs_dir: str | Path = "runs") -> gr.Blocks:
    cache = cache or svc.EngineCache()
    runs = Path(runs_dir)

    def load_step(task: str, text: str, compare: bool, *picks: str) -> str:
        """Validate the input and load (or find cached) the engines; the timed request comes next."""
        if not (text or "").strip():
            return "Type a sentence first -- nothing was sent." if task == "translate" else \
                "Type a message first -- nothing was sent."
        lines = []
        for slot, p in (("A", picks[:5]), ("B", picks[5:])):
            if slot == "B" and not compare:
                continue
            why = svc.unavailable_reason(p[0])
            if why:
                lines.append(f"{slot}: {why}")
                continue
            try:
                cfg = _config(task, *p)
                ld = cache.get(cfg)
                warm = f", warm-up request {S.fmt(ld.warmup_ms, '.0f')} ms" if not ld.cached else ""
                lines.append(f"{slot}: {cfg.label()} {'already loaded' if ld.cached else 'loaded'} "
                             f"(model load {ld.load_ms:.0f} ms{warm}; neither is part of the timings)")
            except Exception as exc:
                lines.append(f"{slot}: could not load: {exc}")
        return "  \n".join(lines)

    def run_slot(task: str, slot: str, nonce: str, text: str, enabled: bool, picks: tuple[str, ...],
                 history: list[dict[str, str]] | None = None):  # type: ignore[no-untyped-def]
        """One timed request; yields (output, metrics html) as tokens arrive."""
        key = f"{task}-{slot.lower()}"
        nonce = nonce or key
        if not enabled:
            yield gr.skip(), gr.skip()
            return
        if not (text or "").strip():
            yield gr.skip(), message_html(nonce, slot, "nothing sent: the input is empty")
            return
        why = svc.unavailable_reason(picks[0])
        if why:
            yield gr.skip(), message_html(nonce, slot, why, error=True)
            return
        try:
            cfg = _config(task, *picks)
            ld = cache.get(cfg)
        except Exception as exc:
            yield gr.skip(), message_html(nonce, slot, f"configuration refused: {exc}", error=True)
            return
        label = f"{slot}: {cfg.label()}"
        if task == "chat":
            msgs = [{"role": m["role"], "content": _content(m)} for m in (history or [])]
            msgs.append({"role": "user", "content": text})
            request = GenerationRequest(messages=tuple(msgs))
        else:
            request = GenerationRequest(text=text)
        last: svc.Snapshot | None = None
        for snap in svc.stream_answer(ld, request):
            last = snap
            out: Any = snap.text
            if task == "chat":
                out = [*msgs, {"role": "assistant", "content": snap.text or ("..." if not snap.done else "")}]
            yield out, metrics_html(nonce, snap, label)
        if last is not None:
            _remember(nonce, svc.HistoryEntry(task, slot, cfg.label(), svc.answer_metrics(last.record),
                                              error=last.error if last.record is None or not last.record.ok
                                              else None))

    def record_step(runs_json: str, hist: list[svc.HistoryEntry]):  # type: ignore[no-untyped-def]
        """Attach the browser's served TTFT to the answers just finished; render the history."""
        try:
            browser = json.loads(runs_json or "{}")
        except json.JSONDecodeError:
            browser = {}
        hist = list(hist or [])
        for run in browser.values():
            entry = _take(str(run.get("nonce", "")))
            if entry is not None:
                ttft = run.get("ttft")
                entry.served_ttft_ms = float(ttft) if isinstance(ttft, (int, float)) else None
                hist.append(entry)
        return hist, svc.history_rows(hist), svc.history_summary(hist)

    with gr.Blocks(title="testbed demo", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        hist_state = gr.State([])
        hist_df = gr.Dataframe(headers=svc.HISTORY_COLUMNS, value=[], interactive=False, elem_id="tb-history",
                               wrap=True, render=False)
        summ_df = gr.Dataframe(headers=svc.SUMMARY_COLUMNS, value=[], interactive=False,
                               elem_id="tb-history-summary", render=False)
        browser_json = gr.Textbox(visible=False)
        with gr.Tabs():
            for task in ("translate", "chat"):
                with gr.Tab("Translate" if task == "translate" else "Chat", id=task):
                    pa = Pickers("configuration A", f"tb-pick-{task}-a")
                    compare = gr.Checkbox(False, label="compare with a second configuration (B runs after A)",
                                          elem_id=f"tb-compare-{task}")
                    pb = Pickers("configuration B", f"tb-pick-{task}-b", visible=False)
                    compare.change(lambda c: gr.update(visible=c), compare, pb.column)
                    with gr.Row():
                        if task == "translate":
                            text = gr.Textbox(label="English source", lines=3, elem_id="tb-input-translate",
                                              placeholder="Type an English sentence")
                        else:
                            text = gr.Textbox(label="your message", lines=2, elem_id="tb-input-chat",
                                              placeholder="Type a message")
                    with gr.Row():
                        go = gr.Button("Translate" if task == "translate" else "Send", variant="primary",
                                       elem_id=f"tb-go-{task}")
                        if task == "chat":
                            clear = gr.Button("Clear conversation")
                    status = gr.Markdown(elem_id=f"tb-status-{task}")
                    nonce_a, nonce_b = gr.Textbox(visible=False), gr.Textbox(visible=False)
                    outs: dict[str, Any] = {}
                    with gr.Row():
                        for slot in ("a", "b"):
                            with gr.Column(visible=slot == "a") as col:
                                if task == "translate":
                                    out: Any = gr.Textbox(label=f"German ({slot.upper()})", lines=3, interactive=False,
                                                     elem_id=f"tb-output-{task}-{slot}")
                                else:
                                    out = gr.Chatbot(label=f"chat ({slot.upper()})", height=320,
                                                     elem_id=f"tb-output-{task}-{slot}")
                                met = gr.HTML(metrics_html("", None, slot.upper()), elem_id=f"tb-metrics-{task}-{slot}")
                                gr.HTML(served_html(f"{task}-{slot}"), elem_id=f"tb-served-{task}-{slot}")
                            outs[slot] = (out, met, col)
                    compare.change(lambda c: gr.update(visible=c), compare, outs["b"][2])
                    if task == "translate":
                        gr.Examples(EXAMPLES, inputs=text)
                    else:
                        gr.Examples([CHAT_EXAMPLE], inputs=text)

                    picks = pa.inputs + pb.inputs

                    def _load(text_, compare_, *p, _task=task):  # type: ignore[no-untyped-def]
                        return load_step(_task, text_, compare_, *p)

                    def _run_a(nonce, text_, *rest, _task=task):  # type: ignore[no-untyped-def]
                        p, hist = rest[:5], (rest[5] if _task == "chat" else None)
                        yield from run_slot(_task, "A", nonce, text_, True, p, hist)

                    def _run_b(nonce, text_, compare_, *rest, _task=task):  # type: ignore[no-untyped-def]
                        p, hist = rest[:5], (rest[5] if _task == "chat" else None)
                        yield from run_slot(_task, "B", nonce, text_, bool(compare_), p, hist)

                    chat_a = [outs["a"][0]] if task == "chat" else []
                    chat_b = [outs["b"][0]] if task == "chat" else []
                    n_a = 2 + 5 + len(chat_a)
                    n_b = 3 + 5 + len(chat_b)
                    ev = go.click(_load, [text, compare, *picks], status)
                    ev = ev.then(_run_a, [nonce_a, text, *pa.inputs, *chat_a], [outs["a"][0], outs["a"][1]],
                                 js=f"(...a) => {{ a = a.slice(0, {n_a}); a[0] = tb.mark('{task}-a'); return a; }}")
                    ev = ev.then(_run_b, [nonce_b, text, compare, *pb.inputs, *chat_b], [outs["b"][0], outs["b"][1]],
                                 js=f"(...a) => {{ a = a.slice(0, {n_b}); "
                                    f"if (a[2]) a[0] = tb.mark('{task}-b'); return a; }}")
                    if task == "chat":
                        ev = ev.then(lambda: "", None, text)
                    ev.then(record_step, [browser_json, hist_state], [hist_state, hist_df, summ_df],
                            js="(...a) => [tb.collect(), a[1]]")
                    if task == "chat":
                        clear.click(lambda: ([], []), None, [outs["a"][0], outs["b"][0]])
            with gr.Tab("Results", id="results") as results_tab:
                _results_tab(runs, results_tab)
            with gr.Tab("Load test", id="loadtest"):
                _loadtest_tab(cache)
        with gr.Accordion("Session history (this browser session)", open=True):
            gr.Markdown("One row per answer. Served TTFT is the browser's measurement; "
                        "p50/p90 by numpy.percentile(method='linear') over the completed answers.")
            hist_df.render()
            summ_df.render()
    return demo


def _content(m: dict[str, Any]) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # Gradio 6 may hand content back as a list of parts
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in c)
    return str(c or "")


# ------------------------------------------------------------------ results and load test
def _results_tab(runs: Path, results_tab: Any) -> None:
    gr.Markdown(f"The latest evaluation run under `{runs}/` (a directory with `report.md` / `pareto.png`, "
                "written by `testbed eval --sweep FILE --out DIR`).")
    with gr.Row():
        refresh = gr.Button("Refresh")
        files = sweep_files()
        sweep = gr.Textbox(value=str(files[0]) if files else "", label="sweep file for a small sweep",
                           placeholder="path to a sweep file (eval/sweeps/*.toml)")
        go = gr.Button("Run small sweep", variant="primary", elem_id="tb-sweep-go")
    where = gr.Markdown(elem_id="tb-results-where")
    report = gr.Markdown(elem_id="tb-results-report")
    pareto = gr.Image(label="Pareto: quality vs latency", type="filepath", interactive=False)
    log = gr.Textbox(label="sweep output", lines=8, max_lines=20, interactive=False, elem_id="tb-sweep-log")

    def show() -> tuple[str, str, Any]:
        run = latest_run(runs)
        if run is None:
            return (f"No evaluation run yet: no directory under `{runs}/` has a `report.md` or `pareto.png`. "
                    "Run one with the button above or `testbed eval --sweep FILE --out runs/NAME`.", "", None)
        return (f"Latest run: `{run.path}` ({run.when})", run.report or "_(no report.md in this run)_",
                str(run.pareto) if run.pareto else None)

    def sweep_fn(path: str, progress: Any = PROGRESS):  # type: ignore[no-untyped-def]
        for frac, text, done in run_sweep(path, runs):
            if frac is not None:
                progress(frac, desc="sweep")
            if done:
                yield (text, *show())
            else:
                yield text, gr.skip(), gr.skip(), gr.skip()

    refresh.click(show, None, [where, report, pareto])
    go.click(sweep_fn, sweep, [log, where, report, pareto])
    gr.on([results_tab.select], show, None, [where, report, pareto])


def _loadtest_tab(cache: svc.EngineCache) -> None:
    gr.Markdown("A short scripted-client scenario on the chosen configuration: warm-up requests run and are "
                "excluded; the table is `testbed.metrics.summary.percentiles` (numpy linear).")
    with gr.Row():
        task = gr.Radio(["translate", "chat"], value="translate", label="task")
        scenario = gr.Radio(list(SCENARIOS), value=next(iter(SCENARIOS)), label="scenario")
        n = gr.Slider(5, 200, value=20, step=1, label="requests")
        warm = gr.Slider(0, 10, value=2, step=1, label="warm-up requests")
    p = Pickers("configuration", "tb-pick-load")
    go = gr.Button("Run load test", variant="primary", elem_id="tb-load-go")
    out = gr.Markdown(elem_id="tb-load-table")
    plot = gr.Plot(label="latency histogram")

    def fn(task_, scenario_, n_, warm_, *picks, progress=PROGRESS):  # type: ignore[no-untyped-def]
        why = svc.unavailable_reason(picks[0])
        if why:
            return f"**not run** -- {why}", None
        try:
            cfg = _config(task_, *picks)
            ld = cache.get(cfg)
        except Exception as exc:
            return f"**configuration refused** -- {exc}", None
        return run_loadtest(ld, task_, scenario_, int(n_), int(warm_),
                            progress=lambda d, t: progress(d / t, desc="load test"))

    go.click(fn, [task, scenario, n, warm, *p.inputs], [out, plot])


# ------------------------------------------------------------------ launch
def launch(port: int | None = None, host: str = "127.0.0.1", runs_dir: str | Path = "runs",
           block: bool = True, cache: svc.EngineCache | None = None) -> tuple[gr.Blocks, str]:
    """Start the demo (never a share link) and return it with its URL; ``block`` waits for Ctrl-C."""
    demo = build_app(cache=cache, runs_dir=runs_dir)
    demo.queue(default_concurrency_limit=4)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    demo.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                inbrowser=False, ssr_mode=False, mcp_server=False, theme=theme, css=CSS, head=HEAD_JS,
                footer_links=[], show_error=True)
    url = demo.local_url or f"http://{host}:{port}/"
    if block:
        print(f"testbed demo running at {url}  (Ctrl-C stops it)", flush=True)
        try:
            demo.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            demo.close()
    return demo, url
