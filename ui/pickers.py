"""The configuration pickers of one slot: model (when the tab's task has several embedded models) /
engine / precision / pruning / threads (/ device when CUDA is there) and, for the answer tabs, a
server URL (empty: the engine runs in this process)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr

from testbed.ui import service as svc
from testbed.ui.defaults import Start


class Pickers:
    def __init__(self, title: str, elem_id: str, visible: bool = True, start: Start | None = None,
                 url: str | None = None, with_url: bool = True, models: Sequence[str] = ()) -> None:
        start = start or Start()
        opts = svc.engine_options()
        labels = [o.label for o in opts]
        default = next((o.label for o in opts if o.name == start.engine and o.available),
                       next((o.label for o in opts if o.available), labels[0]))
        name = svc.engine_of_label(default)
        devs = svc.devices()
        with gr.Column(visible=visible, elem_id=elem_id) as self.column, gr.Row(equal_height=True):
            gr.Markdown(f"**{title}**", min_height=0)
            self.model = gr.Dropdown(list(models), value=models[0] if models else None, label="model",
                                     visible=len(models) > 1, elem_id=f"{elem_id}-model")
            self.engine = gr.Dropdown(labels, value=default, label="engine",
                                      info="unavailable engines are listed with the reason")
            self.device = gr.Dropdown(devs, value="cpu", label="device", visible=len(devs) > 1)
            precs = svc.precision_choices(name)
            prec = start.precision if start.precision in precs else (precs[0] if precs else None)
            self.precision = gr.Dropdown(precs, value=prec, label="precision")
            pruns = svc.pruning_choices(name)
            self.pruning = gr.Dropdown(pruns, value=start.pruning if start.pruning in pruns else "none",
                                       label="pruning")
            threads = svc.thread_choices()
            self.threads = gr.Dropdown(threads, value=start.threads if start.threads in threads else "default",
                                       label="threads")
            self.url = gr.Textbox(url or "", label="server URL (empty: in this process)", visible=with_url,
                                  placeholder="http://127.0.0.1:8000", elem_id=f"{elem_id}-url", max_lines=1)
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
        """engine, precision, pruning, threads, device, model (the engine configuration)."""
        return [self.engine, self.precision, self.pruning, self.threads, self.device, self.model]


def make_config(task: str, engine: str, precision: str, pruning: str, threads: str, device: str,
                model: str | None = None) -> Any:
    """The EngineConfig of a slot; no model picked (a tab with one model): the task's default model."""
    return svc.make_config(task, engine, precision, pruning, threads, device, model=model or None)
