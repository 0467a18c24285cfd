"""The Gradio demo: streaming translation and chat with live latency, two configurations side by
side, a latency waterfall per answer, a session history, the latest evaluation report and a short
load test; the engines run in this process or behind a server URL (served mode).

Privacy: it binds 127.0.0.1, never makes a share link, turns Gradio's analytics and version check
off, keeps the Hugging Face hub offline, and uses system fonts (the default theme would fetch
Google Fonts), so the page requests nothing from outside hosts (``tests/integration/test_ui_browser.py``
checks every request the browser makes).  In served mode the *UI server* calls the given URL; the
page still talks to 127.0.0.1 only.

Honest timing -- two TTFTs, both labelled in the page:

* **engine TTFT**: from :class:`testbed.engines.base.Stream` (stream start -> first token id), or
  in served mode from the server's ``return_timing`` (arrival -> first token);
* **served TTFT**: measured *in the browser* with ``performance.now()``, from the moment the
  request is sent to the moment the first token is in the page's DOM.  Two page paths:
  *direct* (the default: a ``fetch`` stream outside Gradio's queue, :mod:`testbed.ui.direct`) and
  *gradio* (the earlier path: the event's ``js`` hook, Gradio's queue and SSE, a
  ``MutationObserver``).  The difference to the engine TTFT is shown as the page's overhead.

The waterfall (:mod:`testbed.ui.timeline`, built by :func:`testbed.report.waterfall.build`) puts the
page's times and the UI server's on one clock through the page's clock ping.  Engine loading is a
separate step before the timed request (its time is shown apart), and B runs after A.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
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

from testbed.clock import now_ns  # noqa: E402
from testbed.engines.base import GenerationRequest  # noqa: E402
from testbed.metrics import summary as S  # noqa: E402
from testbed.ui import direct as D  # noqa: E402
from testbed.ui import service as svc  # noqa: E402
from testbed.ui import timeline as TL  # noqa: E402
from testbed.ui.defaults import EXAMPLES, MODEL_NOTES, start_config  # noqa: E402
from testbed.ui.page import CSS, HEAD_JS, INTRO  # noqa: E402
from testbed.ui.pickers import Pickers, make_config  # noqa: E402
from testbed.ui.render import message_html, metrics_html, served_html  # noqa: E402
from testbed.ui.tabs import loadtest_tab, results_tab  # noqa: E402

PATHS = ("direct", "gradio")
N_PICK = 7  # engine, precision, pruning, threads, device, model, url

_PENDING: OrderedDict[str, dict[str, Any]] = OrderedDict()  # Gradio-path answers by nonce
_PENDING_LOCK = threading.Lock()


def _remember(nonce: str, item: dict[str, Any]) -> None:
    with _PENDING_LOCK:
        _PENDING[nonce] = item
        while len(_PENDING) > 1000:
            _PENDING.popitem(last=False)


def _take(nonce: str) -> dict[str, Any] | None:
    with _PENDING_LOCK:
        return _PENDING.pop(nonce, None)


def _content(m: dict[str, Any]) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # Gradio 6 may hand content back as a list of parts
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in c)
    return str(c or "")


def _request(task: str, text: str, history: list[dict[str, Any]] | None) -> tuple[GenerationRequest, list[Any]]:
    if task == "chat":
        msgs = [{"role": m["role"], "content": _content(m)} for m in (history or [])]
        msgs.append({"role": "user", "content": text})
        return GenerationRequest(messages=tuple(msgs)), msgs
    return GenerationRequest(text=text), []


# ------------------------------------------------------------------ the answer tabs
class AnswerTab:
    """One of the Translate / Chat tabs: pickers, the two outputs, the waterfall and their events."""

    def __init__(self, task: str, app: App) -> None:
        self.task, self.app = task, app
        start = start_config(task, app.runs)
        urls = app.urls
        models = svc.task_models(task)
        self.pa = Pickers("configuration A", f"tb-pick-{task}-a", start=start, url=urls[0] if urls else None,
                          models=models)
        compare = gr.Checkbox(len(urls) > 1, label="compare with a second configuration (B runs after A)",
                              elem_id=f"tb-compare-{task}")
        self.pb = Pickers("configuration B", f"tb-pick-{task}-b", visible=len(urls) > 1, start=start,
                          url=urls[1] if len(urls) > 1 else None, models=models)
        compare.change(lambda c: gr.update(visible=c), compare, self.pb.column)
        gr.Markdown(f"{start.note}  \n{MODEL_NOTES[task]}", elem_id=f"tb-start-{task}")
        with gr.Row():
            if task == "translate":
                text = gr.Textbox(label="English source", lines=3, elem_id="tb-input-translate",
                                  placeholder="Type an English sentence")
            else:
                text = gr.Textbox(label="your message", lines=2, elem_id="tb-input-chat", placeholder="Type a message")
        with gr.Row():
            go = gr.Button("Translate" if task == "translate" else "Send", variant="primary", elem_id=f"tb-go-{task}")
            path = gr.Radio(list(PATHS), value="direct", label="page path", elem_id=f"tb-path-{task}")
            clear = gr.Button("Clear conversation") if task == "chat" else None
        status = gr.Markdown(elem_id=f"tb-status-{task}")
        tickets = gr.Textbox(visible=False)
        nonce_a, nonce_b = gr.Textbox(visible=False), gr.Textbox(visible=False)
        self.outs: dict[str, tuple[Any, Any, Any]] = {}
        with gr.Row():
            for slot in ("a", "b"):
                with gr.Column(visible=slot == "a" or len(urls) > 1) as col:
                    if task == "translate":
                        out: Any = gr.Textbox(label=f"German ({slot.upper()})", lines=3, interactive=False,
                                              elem_id=f"tb-output-{task}-{slot}")
                    else:
                        out = gr.Chatbot(label=f"chat ({slot.upper()})", height=320, elem_id=f"tb-output-{task}-{slot}")
                        gr.HTML('<div class="tb-live"></div>', elem_id=f"tb-live-{task}-{slot}")
                    met = gr.HTML(metrics_html("", None, slot.upper()), elem_id=f"tb-metrics-{task}-{slot}")
                    gr.HTML(served_html(f"{task}-{slot}"), elem_id=f"tb-served-{task}-{slot}")
                self.outs[slot] = (out, met, col)
        compare.change(lambda c: gr.update(visible=c), compare, self.outs["b"][2])
        wf = gr.HTML(TL.html_of([], "the waterfall of the next answer shows here"), elem_id=f"tb-waterfall-{task}")
        gr.Examples(EXAMPLES[task], inputs=text)
        self._wire(go, text, compare, path, status, tickets, nonce_a, nonce_b, wf, clear)

    def _wire(self, go: Any, text: Any, compare: Any, path: Any, status: Any, tickets: Any, nonce_a: Any,
              nonce_b: Any, wf: Any, clear: Any) -> None:
        """The click: load step (tickets), the direct stream (page js), the Gradio path, the record step."""
        task, app = self.task, self.app
        pa, pb = [*self.pa.inputs, self.pa.url], [*self.pb.inputs, self.pb.url]
        chat_a = [self.outs["a"][0]] if task == "chat" else []
        chat_b = [self.outs["b"][0]] if task == "chat" else []
        ev = go.click(self.prepare, [text, compare, path, *pa, *pb, *chat_a], [status, tickets])
        ev = ev.then(None, [tickets], [app.browser_json], js="async (t) => await tb.direct(t)")
        n_a, n_b = 3 + N_PICK + len(chat_a), 4 + N_PICK + len(chat_b)
        ev = ev.then(self.run_a, [nonce_a, text, path, *pa, *chat_a], [self.outs["a"][0], self.outs["a"][1]],
                     js=f"(...a) => {{ a = a.slice(0, {n_a}); if (a[2] === 'gradio') a[0] = tb.mark('{task}-a');"
                        " return a; }")
        ev = ev.then(self.run_b, [nonce_b, text, path, compare, *pb, *chat_b], [self.outs["b"][0], self.outs["b"][1]],
                     js=f"(...a) => {{ a = a.slice(0, {n_b}); "
                        f"if (a[2] === 'gradio' && a[3]) a[0] = tb.mark('{task}-b'); return a; }}")
        if task == "chat":
            ev = ev.then(lambda: "", None, text)
        outs = [self.outs["a"][0], self.outs["a"][1], self.outs["b"][0], self.outs["b"][1]]
        ev.then(self.record, [app.browser_json, app.hist_state],
                [app.hist_state, app.hist_df, app.summ_df, wf, *outs], js="(...a) => [tb.collect(), a[1]]")
        if clear is not None:
            clear.click(lambda: ([], []), None, [self.outs["a"][0], self.outs["b"][0]])

    # -------------------------------------------------------------- the load step (untimed)
    def prepare(self, text: str, compare: bool, path: str, *rest: Any) -> tuple[str, str]:
        """Validate, load the engines (or check the servers) and, on the direct path, make the tickets."""
        task = self.task
        if not (text or "").strip():
            what = "sentence" if task == "translate" else "message"
            return f"Type a {what} first -- nothing was sent.", "{}"
        pa, pb = rest[:N_PICK], rest[N_PICK:2 * N_PICK]
        history = rest[2 * N_PICK] if task == "chat" else None
        lines, tickets = [], {}
        for slot, p in (("A", pa), ("B", pb)):
            if slot == "B" and not compare:
                continue
            key = f"{task}-{slot.lower()}"
            line, ticket = self._prepare_slot(slot, text, p, history)
            lines.append(line)
            if path == "direct":
                t = self.app.tickets.add(ticket)
                sel = f"#tb-output-{key} textarea" if task == "translate" else f"#tb-live-{key} .tb-live"
                tickets[key] = {"id": t.id, "sel": sel, "error": t.error}
        return "  \n".join(lines), json.dumps(tickets)

    def _prepare_slot(self, slot: str, text: str, p: Sequence[str], history: Any) -> tuple[str, D.Ticket]:
        request, _ = _request(self.task, text, history)
        url = (p[6] or "").strip()
        if url:
            try:
                model = D.check_url(url)
            except ValueError as exc:
                return f"{slot}: {exc}", D.Ticket(self.task, slot, f"{slot}: {url}", request, error=str(exc))
            label = f"{slot}: {model} @ {url}"
            return (f"{slot}: served by {url} (model {model!r}; the server's own timing fills the waterfall when it "
                    "sends return_timing)", D.Ticket(self.task, slot, label, request, url=url, model=model))
        why = svc.unavailable_reason(p[0])
        if why:
            return f"{slot}: {why}", D.Ticket(self.task, slot, slot, request, error=why)
        try:
            cfg = make_config(self.task, *p[:6])
            ld = self.app.cache.get(cfg)
        except Exception as exc:
            msg = f"configuration refused: {exc}"
            return f"{slot}: could not load: {exc}", D.Ticket(self.task, slot, slot, request, error=msg)
        warm = f", warm-up request {S.fmt(ld.warmup_ms, '.0f')} ms" if not ld.cached else ""
        return (f"{slot}: {cfg.label()} {'already loaded' if ld.cached else 'loaded'} "
                f"(model load {ld.load_ms:.0f} ms{warm}; neither is part of the timings)",
                D.Ticket(self.task, slot, f"{slot}: {cfg.label()}", request, loaded=ld))

    # -------------------------------------------------------------- the Gradio path
    def run_a(self, nonce: str, text: str, path: str, *rest: Any):  # type: ignore[no-untyped-def]
        yield from self._run_slot("A", nonce, text, path == "gradio", rest[:N_PICK],
                                  rest[N_PICK] if self.task == "chat" else None)

    def run_b(self, nonce: str, text: str, path: str, compare: bool, *rest: Any):  # type: ignore[no-untyped-def]
        yield from self._run_slot("B", nonce, text, path == "gradio" and bool(compare), rest[:N_PICK],
                                  rest[N_PICK] if self.task == "chat" else None)

    def _run_slot(self, slot: str, nonce: str, text: str, enabled: bool, picks: Sequence[str],
                  history: Any):  # type: ignore[no-untyped-def]
        """One timed request through Gradio's queue; yields (output, metrics html) as tokens arrive."""
        arrival = now_ns()
        task = self.task
        nonce = nonce or f"{task}-{slot.lower()}"
        if not enabled:
            yield gr.skip(), gr.skip()
            return
        if not (text or "").strip():
            yield gr.skip(), message_html(nonce, slot, "nothing sent: the input is empty")
            return
        if (picks[6] or "").strip():
            yield gr.skip(), message_html(nonce, slot, "served mode uses the direct page path", error=True)
            return
        why = svc.unavailable_reason(picks[0])
        if why:
            yield gr.skip(), message_html(nonce, slot, why, error=True)
            return
        try:
            cfg = make_config(task, *picks[:6])
            ld = self.app.cache.get(cfg)
        except Exception as exc:
            yield gr.skip(), message_html(nonce, slot, f"configuration refused: {exc}", error=True)
            return
        label = f"{slot}: {cfg.label()}"
        request, msgs = _request(task, text, history)
        last: svc.Snapshot | None = None
        last_yield = None
        for snap in svc.stream_answer(ld, request):
            grew = last is None or snap.n_tokens > last.n_tokens
            last = snap
            out: Any = snap.text
            if task == "chat":
                out = [*msgs, {"role": "assistant", "content": snap.text or ("..." if not snap.done else "")}]
            if grew:
                last_yield = now_ns()
            yield out, metrics_html(nonce, snap, label)
        if last is not None:
            error = last.error if last.record is None or not last.record.ok else None
            _remember(nonce, {"entry": svc.HistoryEntry(task, slot, cfg.label() + " (gradio)",
                                                         svc.answer_metrics(last.record), error=error),
                              "timing": {"arrival_ns": arrival, "last_yield_ns": last_yield, "record": last.record}})

    # -------------------------------------------------------------- after both answers
    def record(self, runs_json: str, hist: list[svc.HistoryEntry]):  # type: ignore[no-untyped-def]
        """Attach the browser's times to the answers just finished; history, waterfalls, direct outputs."""
        try:
            browser = json.loads(runs_json or "{}")
        except json.JSONDecodeError:
            browser = {}
        hist = list(hist or [])
        wfs, ids = [], []
        outs: dict[str, list[Any]] = {"a": [gr.skip(), gr.skip()], "b": [gr.skip(), gr.skip()]}
        for key, run in sorted(browser.items()):
            if not key.startswith(self.task + "-") or not isinstance(run, dict):
                continue
            slot = key.rsplit("-", 1)[1]
            nonce = str(run.get("nonce", ""))
            served = run.get("ttft")
            served_ms = float(served) if isinstance(served, (int, float)) else None
            if run.get("path") == "direct":
                t = self.app.tickets.get(nonce)
                if t is None or t.recorded:
                    continue
                t.recorded = True
                outs[slot] = self._direct_outputs(t, nonce)
                rec = D.served_record(t) if t.served else t.record
                if t.arrival_ns is not None:
                    hist.append(svc.HistoryEntry(self.task, t.slot, t.label.split(": ", 1)[-1] + " (direct)",
                                                 svc.answer_metrics(rec), error=t.error, served_ttft_ms=served_ms))
                marks = _try(lambda t=t, run=run: TL.direct_marks(t, run))
                label = t.label
            else:
                item = _take(nonce)
                if item is None:
                    continue
                entry = item["entry"]
                entry.served_ttft_ms = served_ms
                hist.append(entry)
                marks = _try(lambda item=item, run=run: TL.gradio_marks(item["timing"], run))
                label = f"{entry.slot}: {entry.config}"
            if marks is not None:
                wfs.append(TL.waterfall(label, *marks))
                ids.append(nonce)
        wf_html = TL.html_of(wfs, "no answer reached the page: no waterfall", ids) if wfs else gr.skip()
        return (hist, svc.history_rows(hist), svc.history_summary(hist), wf_html, *outs["a"], *outs["b"])

    def _direct_outputs(self, t: D.Ticket, nonce: str) -> list[Any]:
        if t.arrival_ns is None and t.error:
            return [gr.skip(), message_html(nonce, t.slot, t.error, error=True)]
        rec = D.served_record(t) if t.served else t.record
        snap = svc.Snapshot(t.text, rec, done=True, error=t.error, warnings=t.warnings)
        out: Any = t.text
        if self.task == "chat":
            msgs = [dict(m) for m in t.request.messages or ()]
            out = [*msgs, {"role": "assistant", "content": t.text}]
        note = "" if rec is not None or not t.served else "the server sent no timing: engine-side numbers n/a"
        return [out, metrics_html(nonce, snap, t.label, note)]


def _try(fn: Any) -> Any:
    try:
        return fn()
    except ValueError:
        return None


# ------------------------------------------------------------------ the app
class App:
    def __init__(self, cache: svc.EngineCache, runs: Path, urls: Sequence[str]) -> None:
        self.cache, self.runs, self.urls = cache, runs, list(urls)
        self.tickets = D.Tickets()
        self.hist_state: Any = None
        self.hist_df: Any = None
        self.summ_df: Any = None
        self.browser_json: Any = None

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="testbed demo", analytics_enabled=False) as demo:
            gr.Markdown(INTRO)
            self.hist_state = gr.State([])
            self.hist_df = gr.Dataframe(headers=svc.HISTORY_COLUMNS, value=[], interactive=False,
                                        elem_id="tb-history", wrap=True, render=False)
            self.summ_df = gr.Dataframe(headers=svc.SUMMARY_COLUMNS, value=[], interactive=False,
                                        elem_id="tb-history-summary", render=False)
            self.browser_json = gr.Textbox(visible=False)
            with gr.Tabs():
                for task in ("translate", "chat"):
                    with gr.Tab("Translate" if task == "translate" else "Chat", id=task):
                        AnswerTab(task, self)
                with gr.Tab("Results", id="results") as tab:
                    results_tab(self.runs, tab)
                with gr.Tab("Load test", id="loadtest"):
                    loadtest_tab(self.cache)
            with gr.Accordion("Session history (this browser session)", open=True):
                gr.Markdown("One row per answer. Served TTFT is the browser's measurement; "
                            "p50/p90 by numpy.percentile(method='linear') over the completed answers.")
                self.hist_df.render()
                self.summ_df.render()
        return demo


def build_app(cache: svc.EngineCache | None = None, runs_dir: str | Path = "runs",
              urls: Sequence[str] = ()) -> tuple[gr.Blocks, App]:
    app = App(cache or svc.EngineCache(), Path(runs_dir), urls)
    return app.build(), app


# ------------------------------------------------------------------ launch
def launch(port: int | None = None, host: str = "127.0.0.1", runs_dir: str | Path = "runs",
           block: bool = True, cache: svc.EngineCache | None = None,
           urls: Sequence[str] = ()) -> tuple[gr.Blocks, str]:
    """Start the demo (never a share link) and return it with its URL; ``block`` waits for Ctrl-C.

    ``urls``: server URLs for configurations A (and B) to open in served mode.
    """
    demo, app = build_app(cache=cache, runs_dir=runs_dir, urls=urls)
    demo.queue(default_concurrency_limit=4)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    demo.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                inbrowser=False, ssr_mode=False, mcp_server=False, theme=theme, css=CSS + TL.CSS, head=HEAD_JS,
                footer_links=[], show_error=True)
    D.mount(demo.app, app.tickets)
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
