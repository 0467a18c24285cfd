"""The Gradio floor: what serving an answer through the demo adds to the engine's TTFT.

Starts the demo in-process on a free 127.0.0.1 port, opens it in Debian's chromium (Playwright),
and translates the first N sentences of the test set with configuration A = the fake engine (no
model: its TTFT is ~0, so its served TTFT *is* the path's floor) and B = the torch engine on
marian-en-de, side by side, so both are measured interleaved in one run.  Per answer it reads

* engine TTFT: the engine's Stream (``data-engine-ttft-ms`` of the metrics panel), and
* served TTFT: the page's own measurement (request sent -> first token in the DOM),

and prints the medians and the overhead ``served - engine``.  The first ``--warmup`` answers are
excluded.

    .venv/bin/python bench/ui_overhead.py --requests 30
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
from typing import Any

from testbed.signature import git_sha, result_header  # load average and git SHA at the start

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=30, help="measured answers per configuration (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="answers run first and excluded (default 3)")
    ap.add_argument("--precision", default="fp32", help="precision of the torch configuration (default fp32)")
    ap.add_argument("--device", default="cpu", help="device of the torch configuration (cuda where there is one)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--json", default=None, help="also write the samples to this file")
    ap.add_argument("--out", default=None, help="also write the table (with its header) to this file")
    args = ap.parse_args()
    git_sha()

    from playwright.sync_api import sync_playwright

    from testbed.datasets import load_dataset
    from testbed.metrics.summary import percentiles
    from testbed.ui.app import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    demo, url = launch(port=port, block=False)
    sentences = [ex.text or "" for ex in load_dataset("test", limit=args.requests + args.warmup)]
    samples: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    labels: dict[str, str] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(url)
            page.wait_for_selector("#tb-input-translate textarea")
            page.locator("#tb-pick-translate-a").get_by_label("engine").click()
            page.get_by_role("option", name="fake", exact=True).click()
            page.locator("#tb-compare-translate input").check()
            if args.device != "cpu":  # the device picker is shown only where CUDA is available
                page.locator("#tb-pick-translate-b").get_by_label("device").click()
                page.get_by_role("option", name=args.device, exact=True).click()
            page.locator("#tb-pick-translate-b").get_by_label("precision").click()
            page.get_by_role("option", name=args.precision, exact=True).click()
            for i, text in enumerate(sentences):
                before = page.evaluate(
                    "() => Object.fromEntries(Object.entries(tb.runs).map(([k, r]) => [k, r.nonce]))")
                page.fill("#tb-input-translate textarea", text)
                page.click("#tb-go-translate")
                got: dict[str, Any] = {}
                for slot in ("a", "b"):
                    key = f"translate-{slot}"
                    page.wait_for_function(
                        f"""() => {{ const r = tb.runs['{key}']; if (!r || r.nonce === {json.dumps(before.get(key))})
                            return false; const m = document.querySelector('#tb-metrics-{key} [data-nonce]');
                            return m && m.dataset.nonce === r.nonce && m.dataset.done === '1'; }}""", timeout=300_000)
                    got[slot] = page.evaluate(
                        f"""() => {{ const m = document.querySelector('#tb-metrics-{key} [data-nonce]');
                            return [tb.runs['{key}'].ttft, m.dataset.engineTtftMs, m.dataset.ok,
                                    m.querySelector('b').innerText]; }}""")
                if i < args.warmup:
                    continue
                for slot, (served, engine, ok, label) in got.items():
                    labels[slot] = label
                    if ok == "1" and served is not None and engine:
                        samples[slot].append((float(served), float(engine)))
                print(f"\r{i + 1 - args.warmup}/{args.requests}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            browser.close()
    finally:
        demo.close()

    lines = ["# The Gradio floor\n", result_header("python bench/ui_overhead.py " + " ".join(sys.argv[1:]), rounds=1,
                                                    answers=f"{args.requests} per configuration",
                                                    warmup=f"{args.warmup} excluded"),
             f"Interleaved (A then B per click), {os.cpu_count()} CPUs shared by the browser, the demo and this "
             "script.\n",
             "| configuration | n | engine TTFT p50 ms | served TTFT p50 ms | overhead p50 ms | overhead p90 ms |",
             "|---|---:|---:|---:|---:|---:|"]
    out: dict[str, Any] = {}
    for slot, rows in samples.items():
        eng = percentiles([e for _, e in rows], (50, 90))
        srv = percentiles([s for s, _ in rows], (50, 90))
        ovh = percentiles([s - e for s, e in rows], (50, 90))
        out[labels.get(slot, slot)] = {"samples": rows, "engine": eng, "served": srv, "overhead": ovh}
        f = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
        lines.append(f"| {labels.get(slot, slot)} | {len(rows)} | {f(eng['p50'])} | {f(srv['p50'])} | "
                     f"{f(ovh['p50'])} | {f(ovh['p90'])} |")
    if samples["a"] and samples["b"]:
        oa = statistics.median(s - e for s, e in samples["a"])
        ob = statistics.median(s - e for s, e in samples["b"])
        lines.append(f"\noverhead ratio (marian / fake floor): {ob / oa:.2f}" if oa > 0 else "")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from pathlib import Path

        from testbed.io import write_text_atomic

        write_text_atomic(Path(args.out), text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
