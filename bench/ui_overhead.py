"""The page's floor: what serving an answer through the demo adds to the engine's TTFT, on the
direct path (a fetch stream outside Gradio's queue) and on the earlier Gradio-queue path.

Starts the demo in-process on a free 127.0.0.1 port, opens it in Debian's chromium (Playwright),
and translates the first N sentences of the test set with configuration A = the fake engine (no
model: its TTFT is ~0, so its served TTFT *is* the path's floor) and B = the torch engine on
marian-en-de, side by side.  The page path alternates click by click (direct, gradio, direct, ...),
so both paths are measured interleaved in one run.  Per answer it reads

* engine TTFT: the engine's Stream (``data-engine-ttft-ms`` of the metrics panel),
* served TTFT: the page's own measurement (request sent -> first token in the DOM), and
* the waterfall's phases (where the time goes),

and prints the medians and the overhead ``served - engine``.  The first ``--warmup`` clicks of
each path are excluded.

    .venv/bin/python bench/ui_overhead.py --requests 30 --out bench/results/ui_overhead.md
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections import defaultdict
from typing import Any

from testbed.signature import git_sha, result_header  # load average and git SHA at the start

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PATHS = ("direct", "gradio")
TARGET_MS = 30.0

NONCES = "() => Object.fromEntries(Object.entries(tb.runs).map(([k, r]) => [k, r.nonce]))"
WAIT_DONE = """([key, before]) => { const r = tb.runs[key]; if (!r || r.nonce === before) return false;
    const m = document.querySelector('#tb-metrics-' + key + ' [data-nonce]');
    return m && m.dataset.nonce === r.nonce && m.dataset.done === '1'; }"""
READ = """(key) => { const m = document.querySelector('#tb-metrics-' + key + ' [data-nonce]'); const r = tb.runs[key];
    return [r.ttft, m.dataset.engineTtftMs, m.dataset.ok, m.querySelector('b').innerText, r.nonce]; }"""
PHASES = """(nonce) => { const w = document.querySelector('#tb-waterfall-translate .tb-wf[data-nonce="' + nonce + '"]');
    return w ? [...w.querySelectorAll('.tb-phase')].map(p => [p.dataset.name,
        parseFloat(p.dataset.endMs) - parseFloat(p.dataset.startMs)]) : null; }"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=30, help="measured answers per configuration and path (30)")
    ap.add_argument("--warmup", type=int, default=3, help="clicks per path run first and excluded (default 3)")
    ap.add_argument("--precision", default="fp32", help="precision of the torch configuration (default fp32)")
    ap.add_argument("--device", default="cpu", help="device of the torch configuration (cuda where there is one)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--json", default=None, help="also write the samples to this file")
    ap.add_argument("--out", default=None, help="also write the table (with its header) to this file")
    args = ap.parse_args()
    git_sha()

    from playwright.sync_api import sync_playwright

    from testbed.datasets import load_dataset
    from testbed.ui.app import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    demo, url = launch(port=port, block=False)
    n_clicks = 2 * (args.requests + args.warmup)
    sentences = [ex.text or "" for ex in load_dataset("test", limit=n_clicks)]
    samples: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    phases: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    labels: dict[str, str] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(url)
            page.wait_for_selector("#tb-input-translate textarea")
            _setup(page, args)
            for i, text in enumerate(sentences):
                path = PATHS[i % 2]
                page.locator("#tb-path-translate").get_by_label(path).check()
                before = page.evaluate(NONCES)
                page.fill("#tb-input-translate textarea", text)
                page.click("#tb-go-translate")
                got: dict[str, Any] = {}
                for slot in ("a", "b"):
                    key = f"translate-{slot}"
                    page.wait_for_function(WAIT_DONE, arg=[key, before.get(key)], timeout=300_000)
                    got[slot] = page.evaluate(READ, key)
                page.wait_for_function("(n) => document.querySelector("
                                       "'#tb-waterfall-translate .tb-wf[data-nonce=\"' + n + '\"]') !== null",
                                       arg=got["b"][4], timeout=60_000)
                if i < 2 * args.warmup:
                    continue
                for slot, (served, engine, ok, label, nonce) in got.items():
                    labels[slot] = label
                    if ok == "1" and served is not None and engine:
                        samples[(slot, path)].append((float(served), float(engine)))
                        for name, ms in page.evaluate(PHASES, nonce) or []:
                            phases[(slot, path)][name].append(ms)
                print(f"\r{i + 1 - 2 * args.warmup}/{n_clicks - 2 * args.warmup}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            browser.close()
    finally:
        demo.close()
    header = result_header("python bench/ui_overhead.py " + " ".join(sys.argv[1:]), rounds=1,
                           answers=f"{args.requests} per configuration and page path",
                           warmup=f"{args.warmup} clicks per path excluded",
                           order="paths alternate click by click (direct, gradio, ...); A then B per click",
                           browser=_chromium_version(args.chromium), gradio=_gradio_version())
    text, out = _report(header, samples, phases, labels)
    print(text)
    if args.out:
        from pathlib import Path

        from testbed.io import write_text_atomic

        write_text_atomic(Path(args.out), text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
    return 0


def _chromium_version(path: str) -> str:
    import subprocess

    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _gradio_version() -> str:
    from importlib.metadata import version

    return version("gradio")


def _setup(page: Any, args: argparse.Namespace) -> None:
    """A = fake, B = torch (the chosen precision / device), side by side."""
    page.locator("#tb-pick-translate-a").get_by_label("engine").click()
    page.get_by_role("option", name="fake", exact=True).click()
    page.locator("#tb-compare-translate input").check()
    page.locator("#tb-pick-translate-b").get_by_label("engine").click()
    page.get_by_role("option", name="torch", exact=True).click()
    if args.device != "cpu":  # the device picker is shown only where CUDA is available
        page.locator("#tb-pick-translate-b").get_by_label("device").click()
        page.get_by_role("option", name=args.device, exact=True).click()
    page.locator("#tb-pick-translate-b").get_by_label("precision").click()
    page.get_by_role("option", name=args.precision, exact=True).click()


def _report(header: str, samples: dict[tuple[str, str], list[tuple[float, float]]],
            phases: dict[tuple[str, str], dict[str, list[float]]], labels: dict[str, str]) -> tuple[str, Any]:
    from testbed.metrics.summary import percentiles

    f = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    lines = ["# The page's floor: direct path vs Gradio queue\n", header,
             f"Interleaved (the page path alternates per click; A then B per click), {os.cpu_count()} CPUs shared by "
             "the browser, the demo and this script.  Overhead = served TTFT (page: send -> first token in the "
             "DOM) - engine TTFT (stream start -> first token).  Percentiles: numpy linear.\n",
             "| configuration | page path | n | engine TTFT p50 ms | served TTFT p50 ms | overhead p50 ms "
             "| overhead p90 ms |", "|---|---|---:|---:|---:|---:|---:|"]
    out: dict[str, Any] = {}
    ovh50: dict[tuple[str, str], float | None] = {}
    for slot in ("a", "b"):
        for path in PATHS:
            rows = samples.get((slot, path), [])
            eng = percentiles([e for _, e in rows], (50, 90))
            srv = percentiles([s for s, _ in rows], (50, 90))
            ovh = percentiles([s - e for s, e in rows], (50, 90))
            ovh50[(slot, path)] = ovh["p50"]
            out[f"{labels.get(slot, slot)} {path}"] = {"samples": rows, "engine": eng, "served": srv, "overhead": ovh}
            lines.append(f"| {labels.get(slot, slot)} | {path} | {len(rows)} | {f(eng['p50'])} | {f(srv['p50'])} | "
                         f"{f(ovh['p50'])} | {f(ovh['p90'])} |")
    d, g = ovh50.get(("a", "direct")), ovh50.get(("a", "gradio"))
    if d is not None and g is not None and d > 0:
        lines.append(f"\nfake-engine floor, overhead p50: direct {d:.1f} ms vs gradio {g:.1f} ms "
                     f"(gradio / direct {g / d:.1f}x); target p50 < {TARGET_MS:.0f} ms on the direct path: "
                     f"{'met' if d < TARGET_MS else 'not met'}.")
    lines += ["\n## Where the floor goes (fake engine, median ms per waterfall phase)\n",
              "| page path | phase | n | p50 ms | p90 ms |", "|---|---|---:|---:|---:|"]
    for path in PATHS:
        for name, vals in phases.get(("a", path), {}).items():
            st = percentiles(vals, (50, 90))
            lines.append(f"| {path} | {name} | {st['count']} | {st['p50']:.2f} | {st['p90']:.2f} |")
    out["phases"] = {f"{k[0]} {k[1]}": dict(v) for k, v in phases.items()}
    return "\n".join(lines) + "\n", out


if __name__ == "__main__":
    raise SystemExit(main())
