"""The Results and Load-test tabs (Gradio layout only; their work is in ``results`` / ``loadtest``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from testbed.serve.batcher import BATCHING_MODES, BatchConfig
from testbed.ui import service as svc
from testbed.ui.loadtest import BATCHED, SCENARIOS, run_loadtest
from testbed.ui.pickers import Pickers, make_config
from testbed.ui.results import latest_run, run_sweep, sweep_files

PROGRESS = gr.Progress()  # Gradio finds a progress tracker by its default value
def results_tab(runs: Path, results_tab: Any) -> None:
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


def loadtest_tab(cache: svc.EngineCache) -> None:
    gr.Markdown("A short scripted-client scenario on the chosen configuration: warm-up requests run and are "
                "excluded; the table is `testbed.metrics.summary.percentiles` (numpy linear).  The batched "
                "scenario runs the server's batcher in this process (no HTTP), with the batching mode below; "
                "an engine that cannot let rows join a running batch refuses `continuous`.  Under the table: "
                "the waterfall of the request with the median E2E.")
    with gr.Row():
        task = gr.Radio(["translate", "chat"], value="translate", label="task")
        scenario = gr.Radio(list(SCENARIOS), value=next(iter(SCENARIOS)), label="scenario", elem_id="tb-load-scenario")
        n = gr.Slider(5, 200, value=20, step=1, label="requests")
        warm = gr.Slider(0, 10, value=2, step=1, label="warm-up requests")
    with gr.Row():
        batching = gr.Radio(list(BATCHING_MODES), value="static", label=f"batching ({BATCHED} only)",
                            elem_id="tb-load-batching")
        max_batch = gr.Slider(1, 16, value=4, step=1, label="max batch (and concurrent users)",
                              elem_id="tb-load-max-batch")
    p = Pickers("configuration", "tb-pick-load", with_url=False)
    go = gr.Button("Run load test", variant="primary", elem_id="tb-load-go")
    out = gr.Markdown(elem_id="tb-load-table")
    plot = gr.Plot(label="latency histogram")
    wf = gr.Plot(label="waterfall of the median request", elem_id="tb-load-waterfall")

    def fn(task_, scenario_, n_, warm_, batching_, max_batch_, *picks, progress=PROGRESS):  # type: ignore[no-untyped-def]
        why = svc.unavailable_reason(picks[0])
        if why:
            return f"**not run** -- {why}", None, None
        try:
            cfg = make_config(task_, *picks)
            batch = BatchConfig(batching=batching_, max_batch_size=int(max_batch_), max_wait_ms=2.0)
            ld = cache.get(cfg)
            return run_loadtest(ld, task_, scenario_, int(n_), int(warm_), batch=batch,
                                progress=lambda d, t: progress(d / t, desc="load test"))
        except Exception as exc:
            return f"**configuration refused** -- {exc}", None, None

    go.click(fn, [task, scenario, n, warm, batching, max_batch, *p.inputs], [out, plot, wf])
