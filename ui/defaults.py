"""What the demo opens on: the fastest configuration that passed the gate in the newest sweep.

A sweep run is a directory under ``runs/`` holding ``results.jsonl`` (``testbed eval``); per task
(its model) the newest such run is read, and among its rows whose gate verdict is ``pass`` (the
fp32 reference passes by definition) the one with the lowest SingleStream p90 E2E is the start
configuration, if its engine is installed here.  Otherwise the demo opens on torch fp32 and says
why.  Reading only: nothing here runs a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.engines.registry import is_available
from testbed.ui.service import TASK_MODELS

#: what the embedded models are for, shown next to the examples
MODEL_NOTES = {
    "translate": ("**marian-en-de** is a small English -> German Marian model trained by testbed on "
                  "software-documentation and UI sentences (its test set is of that kind): short instructions "
                  "about menus, dialogs, files and settings translate best; news, idioms and long paragraphs "
                  "are outside what it saw."),
    "chat": ("**smollm2-135m-instruct** is a 135M-parameter instruction model: short, simple questions and "
             "one-step requests work; facts, arithmetic and long reasoning are beyond it (expect confident "
             "mistakes).  **chitchat-bbs-10m** (pick it in the model list) is a ~10M-parameter BlenderBot-small "
             "model trained by testbed on casual two-person chats: it answers small talk with short, generic, "
             "lower-cased replies and knows nothing else; see `models/chitchat-bbs-10m/MODEL_CARD.md`."),
}
EXAMPLES = {
    "translate": ["Click OK to close the dialog.",
                  "Select the range of cells that you want to sort.",
                  "You can insert a picture from a file into the current document.",
                  "To change the default printer, open the Settings menu."],
    "chat": ["What is a good name for a pet turtle?", "Give me three tips for a good night's sleep.",
             "Write a short greeting for a birthday card."],
}


@dataclass(frozen=True)
class Start:
    engine: str = "torch"
    precision: str = "fp32"
    pruning: str = "none"
    threads: str = "default"
    note: str = ""


def _rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _model(row: dict[str, Any]) -> str | None:
    sig = row.get("signature") or {}
    return sig.get("model") or sig.get("model_name")


def _passed(row: dict[str, Any]) -> bool:
    g = row.get("gate") or {}
    return row.get("status") == "ok" and (g.get("verdict") == "pass" or (g.get("verdict") is None and
                                                                          g.get("passed") is True))


def _latency(row: dict[str, Any]) -> float:
    v = (row.get("singlestream") or {}).get("p90_e2el_ms")
    return float(v) if isinstance(v, (int, float)) else float("inf")


def start_config(task: str, runs: Path) -> Start:
    """The start configuration of ``task``'s tab, with the sentence that says where it came from."""
    model = TASK_MODELS[task]
    sweeps = sorted((p for p in runs.glob("**/results.jsonl") if p.is_file()),
                    key=lambda p: p.stat().st_mtime, reverse=True) if runs.is_dir() else []
    for path in sweeps:
        rows = [r for r in _rows(path) if _model(r) == model]
        if not rows:
            continue
        passed = sorted((r for r in rows if _passed(r) and _latency(r) < float("inf")), key=_latency)
        where = f"the newest sweep of {model} under `{runs}/` (`{path.parent}`)"
        if not passed:
            return Start(note=f"Opened on torch fp32: no configuration passed the gate in {where}.")
        skipped = []
        for r in passed:
            cfg = r.get("config") or {}
            engine = str(cfg.get("engine", "torch"))
            ok, why = is_available(engine)
            if not ok:
                skipped.append(f"{r.get('label')} ({why})")
                continue
            threads = cfg.get("threads")
            more = f"; skipped, not installed here: {', '.join(skipped)}" if skipped else ""
            return Start(engine, str(cfg.get("precision", "fp32")), str(cfg.get("pruning", "none")),
                         "default" if threads is None else str(threads),
                         f"Opened on **{r.get('label')}**: the fastest configuration that passed the gate "
                         f"(SingleStream p90 E2E {_latency(r):.1f} ms) in {where}{more}.")
        return Start(note=f"Opened on torch fp32: the configurations that passed the gate in {where} need "
                          f"engines not installed here ({', '.join(skipped)}).")
    return Start(note=f"Opened on torch fp32: no sweep of {model} under `{runs}/` yet (run `testbed eval`).")
