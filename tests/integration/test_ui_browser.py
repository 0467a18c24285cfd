"""The Gradio demo driven by a real browser: Debian's chromium through Playwright (never a
browser download).  One app (in-process, on a free 127.0.0.1 port) and one browser per module.

Skipped only when chromium or playwright is absent locally; ``.ci/run`` installs chromium and
sets ``TESTBED_REQUIRE_BROWSER=1``, which turns that skip into a failure.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT_KEEP = os.environ.get("TESTBED_UI_SCREENSHOT")  # optional copy kept outside tmp
WATERFALL_KEEP = os.environ.get("TESTBED_UI_WATERFALL_SHOT")  # optional copy of the two waterfalls

pytestmark = pytest.mark.slow


def _need_browser() -> None:
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} is not installed (apt-get install --no-install-recommends chromium)"
    else:
        try:
            import playwright  # noqa: F401
        except ImportError:
            missing = "the playwright package is not installed (pip install -e '.[dev]')"
    if missing:
        if os.environ.get("TESTBED_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser test required (TESTBED_REQUIRE_BROWSER=1) but {missing}")
        pytest.skip(missing)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def app_url(runs_dir: Path) -> Iterator[str]:
    _need_browser()
    from testbed.engines.base import Prepared
    from testbed.engines.fake.engine import FakeEngine
    from testbed.engines.registry import ENGINES, EngineEntry, create_engine
    from testbed.ui.app import launch
    from testbed.ui.service import EngineCache

    class BoomEngine(FakeEngine):
        """The fake engine, failing mid-stream on any input that contains BOOM; its capabilities
        say rows cannot join a running batch (so the load test's continuous mode is refused)."""

        capabilities = dataclasses.replace(FakeEngine.capabilities, batching="static",
                                           join_refusal="test engine: rows cannot join a running batch")

        def _decode(self, prepared: Prepared) -> Generator[object, None, None]:
            words = {self.tokenizer.words[i] for i in prepared.input_ids}
            for i, tok in enumerate(super()._decode(prepared)):
                if i == 2 and "BOOM" in words:
                    raise RuntimeError("engine exploded on purpose")
                yield tok

    def factory(cfg: Any) -> Any:
        return BoomEngine(cfg) if cfg.engine == "fake" else create_engine(cfg, load=False)

    # an engine whose runtime is not installed: listed, disabled, with the reason
    ENGINES["needs-extra"] = EngineEntry("testbed_no_such_module:X", "tensorrt", "testbed_no_such_module",
                                         "test entry: its runtime is missing")
    try:
        demo, url = launch(port=_free_port(), block=False, cache=EngineCache(factory), runs_dir=runs_dir)
    finally:
        del ENGINES["needs-extra"]
    yield url
    demo.close()


@pytest.fixture(scope="module")
def browser(app_url: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, app_url: str) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1500})
    pg = ctx.new_page()
    pg.requests_seen = []  # type: ignore[attr-defined]
    pg.on("request", lambda r: pg.requests_seen.append(r.url))  # type: ignore[attr-defined]
    pg.goto(app_url)
    pg.wait_for_selector("#tb-input-translate textarea")
    yield pg
    ctx.close()


def _nonces(page: Any) -> dict[str, str]:
    return dict(page.evaluate("() => Object.fromEntries(Object.entries(tb.runs).map(([k, r]) => [k, r.nonce]))"))


def _done(page: Any, key: str, before: dict[str, str], timeout: float = 120_000) -> None:
    """Wait until the answer of the request sent after ``before`` was taken is complete in the page."""
    page.wait_for_function(
        f"""() => {{ const r = tb.runs['{key}']; if (!r || r.nonce === {before.get(key, "")!r}) return false;
            const m = document.querySelector('#tb-metrics-{key} [data-nonce]');
            return m !== null && m.dataset.nonce === r.nonce && m.dataset.done === '1'; }}""", timeout=timeout)


def _pick(page: Any, scope: str, label: str, option: str) -> None:
    page.locator(f"#{scope}").get_by_label(label).click()
    page.get_by_role("option", name=option, exact=False).first.click()


def _translate(page: Any, text: str) -> dict[str, str]:
    before = _nonces(page)
    page.fill("#tb-input-translate textarea", text)
    page.click("#tb-go-translate")
    return before


def _waterfalls(page: Any, task: str = "translate") -> list[dict[str, Any]]:
    """The waterfalls drawn under the answers: label, total and each bar's numbers."""
    page.wait_for_selector(f"#tb-waterfall-{task} .tb-wf")
    return list(page.evaluate(f"""() => [...document.querySelectorAll('#tb-waterfall-{task} .tb-wf')].map(w => ({{
        label: w.dataset.label, total: parseFloat(w.dataset.totalMs),
        phases: [...w.querySelectorAll('.tb-phase')].map(p => ({{name: p.dataset.name, source: p.dataset.source,
                  start: parseFloat(p.dataset.startMs), end: parseFloat(p.dataset.endMs)}}))}}))"""))


def _check_waterfall(wf: dict[str, Any], served_e2e: float, expect: list[str]) -> None:
    """Phases present in this order, contiguous from 0, summing to the page's served E2E (1 ms)."""
    names = [p["name"] for p in wf["phases"]]
    assert names == expect, names
    t = 0.0
    for p in wf["phases"]:
        assert abs(p["start"] - t) < 1e-3 and p["end"] >= p["start"], wf["phases"]
        t = p["end"]
    assert abs(sum(p["end"] - p["start"] for p in wf["phases"]) - served_e2e) < 1.0, (wf, served_e2e)
    assert all(p["source"] for p in wf["phases"])


DIRECT_INPROC = ["send (page -> ui server)", "queue wait (engine lock)", "tokenisation", "encoder pass",
                 "first decoding step", "later tokens", "detokenisation + hand-off",
                 "transport (ui server -> page)", "render (chunk -> DOM)"]


def test_translate_streams_german_with_metrics_then_side_by_side(page: Any, tmp_path: Path) -> None:
    # the direct path (the default): the answer streams into the output, chunk by chunk
    before = _translate(page, "Click OK to close the dialog.")
    _done(page, "translate-a", before)
    german = page.input_value("#tb-output-translate-a textarea")
    assert "Klicken" in german or "Dialog" in german, german
    metrics = page.inner_text("#tb-metrics-translate-a")
    assert "engine TTFT ms" in metrics and "TPOT ms" in metrics and "tok/s" in metrics
    run = page.evaluate("tb.runs['translate-a']")
    # streamed: several token events (reads of the body may coalesce them on a busy machine)
    assert run["path"] == "direct" and run["events"] >= 2, f"not streamed: {run}"
    (wf,) = _waterfalls(page)
    _check_waterfall(wf, run["e2e"], DIRECT_INPROC)
    assert [p["source"] for p in wf["phases"]][:3] == ["page -> ui server", "ui server", "engine"]
    later = next(p for p in wf["phases"] if p["name"] == "later tokens")
    assert later["end"] > later["start"]
    page.wait_for_function("document.querySelector('#tb-served-translate-a').innerText.includes(' ms')")
    assert "served TTFT" in page.inner_text("#tb-served-translate-a")
    status = page.inner_text("#tb-status-translate")
    assert "model load" in status

    # switch configuration: B = torch int8, side by side
    page.locator("#tb-compare-translate input").check()
    page.wait_for_selector("#tb-output-translate-b textarea")
    _pick(page, "tb-pick-translate-b", "precision", "int8")
    before = _translate(page, "Select the range of cells that you want to sort.")
    _done(page, "translate-a", before)
    _done(page, "translate-b", before)
    a = page.input_value("#tb-output-translate-a textarea")
    b = page.input_value("#tb-output-translate-b textarea")
    assert a.strip() and b.strip()
    assert "torch/int8/cpu" in page.inner_text("#tb-metrics-translate-b")
    # two waterfalls side by side, one shared axis: each sums to its own served E2E
    page.wait_for_function("document.querySelectorAll('#tb-waterfall-translate .tb-wf').length === 2")
    wa, wb = _waterfalls(page)
    runs = page.evaluate("tb.runs")
    _check_waterfall(wa, runs["translate-a"]["e2e"], DIRECT_INPROC)
    _check_waterfall(wb, runs["translate-b"]["e2e"], DIRECT_INPROC)
    assert "torch/int8/cpu" in wb["label"]
    if WATERFALL_KEEP:
        Path(WATERFALL_KEEP).parent.mkdir(parents=True, exist_ok=True)
        page.locator("#tb-waterfall-translate").screenshot(path=WATERFALL_KEEP)
    # the history has one row per answer, with the browser's served TTFT filled in
    page.wait_for_function("document.querySelector('#tb-history').innerText.includes('torch/int8/cpu')")
    hist = page.inner_text("#tb-history")
    assert hist.count("translate") >= 3 and "(direct)" in hist
    summary = page.inner_text("#tb-history-summary")
    assert "served TTFT ms" in summary and "Gradio overhead ms" in summary
    shot = tmp_path / "ui_side_by_side.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if SCREENSHOT_KEEP:
        Path(SCREENSHOT_KEEP).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, SCREENSHOT_KEEP)
    # nothing in any of that went to another host
    hosts = {urlparse(u).hostname for u in page.requests_seen if not u.startswith(("data:", "blob:"))}
    assert hosts <= {"127.0.0.1", "localhost"}, hosts


def test_bad_input_engine_error_and_unavailable_engine(page: Any) -> None:
    # empty input: a friendly message and no request
    page.fill("#tb-input-translate textarea", "   ")
    page.click("#tb-go-translate")
    page.wait_for_function("document.querySelector('#tb-status-translate').innerText.includes('nothing was sent')")
    assert page.input_value("#tb-output-translate-a textarea") == ""

    # an engine error shows, and the app stays usable
    _pick(page, "tb-pick-translate-a", "engine", "fake")
    _done(page, "translate-a", _translate(page, "this will BOOM soon enough"))
    assert "engine exploded on purpose" in page.inner_text("#tb-metrics-translate-a")
    _done(page, "translate-a", _translate(page, "echo these words"))
    assert page.input_value("#tb-output-translate-a textarea") == "echo these words"
    assert "error" not in page.inner_text("#tb-metrics-translate-a")

    # an over-long input is truncated with a visible notice (the fake engine's limit: 256 tokens)
    _done(page, "translate-a", _translate(page, " ".join(f"w{i}" for i in range(300))))
    assert "truncated to 256 of its 301 tokens" in page.inner_text("#tb-metrics-translate-a")

    # an engine whose extra is missing: listed as unavailable with the reason, and refused
    page.locator("#tb-pick-translate-a").get_by_label("engine").click()
    opt = page.get_by_role("option", name="needs-extra", exact=False).first
    assert "pip install 'testbed[tensorrt]'" in opt.inner_text()
    opt.click()
    page.wait_for_function("document.querySelector('#tb-pick-translate-a').innerText.includes('disabled')")
    _done(page, "translate-a", _translate(page, "Click OK."))
    assert "not available" in page.inner_text("#tb-metrics-translate-a")


def test_page_requests_only_localhost(page: Any) -> None:
    """Load every tab; every request the page made went to 127.0.0.1 / localhost."""
    for tab in ("Chat", "Results", "Load test", "Translate"):
        page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(300)
    page.wait_for_function("document.querySelector('#tb-results-where').innerText.includes('No evaluation run')")
    page.wait_for_timeout(1000)  # Gradio keeps a heartbeat open: never "network idle"
    urls = [u for u in page.requests_seen if not u.startswith(("data:", "blob:"))]
    assert urls
    outside = [u for u in urls if urlparse(u).hostname not in ("127.0.0.1", "localhost")]
    assert not outside, outside


def test_load_test_tab_on_fake_engine(page: Any) -> None:
    page.get_by_role("tab", name="Load test").click()
    _pick(page, "tb-pick-load", "engine", "fake")
    page.click("#tb-load-go")
    page.wait_for_selector("#tb-load-table table", timeout=60_000)
    table = page.inner_text("#tb-load-table")
    assert "TTFT (ms)" in table and "p90" in table and "20 / 0" in table
    page.wait_for_selector("#tb-load-waterfall .js-plotly-plot, #tb-load-waterfall img", timeout=60_000)
    # the batched scenario: continuous is refused for an engine whose capabilities say so, static runs
    page.locator("#tb-load-scenario").get_by_label("concurrency (in-process batcher)").check()
    page.locator("#tb-load-batching").get_by_label("continuous").check()
    page.click("#tb-load-go")
    page.wait_for_function("document.querySelector('#tb-load-table').innerText.includes('refused')", timeout=60_000)
    assert "rows cannot join a running batch" in page.inner_text("#tb-load-table")
    page.locator("#tb-load-batching").get_by_label("static").check()
    page.click("#tb-load-go")
    page.wait_for_function("document.querySelector('#tb-load-table').innerText.includes('static batch<=4')",
                           timeout=60_000)
    assert "20 / 0" in page.inner_text("#tb-load-table")


def test_gradio_path_still_streams_and_draws_its_waterfall(page: Any) -> None:
    """The earlier path (Gradio's queue), kept for the interleaved comparison."""
    page.locator("#tb-path-translate").get_by_label("gradio").check()
    page.evaluate("""() => { window.__counts = []; const host = document.querySelector('#tb-metrics-translate-a');
        new MutationObserver(() => { const m = host.querySelector('[data-ntok]');
          if (m) window.__counts.push(parseInt(m.dataset.ntok)); })
          .observe(host, {subtree: true, childList: true, attributes: true}); }""")
    _done(page, "translate-a", _translate(page, "Click OK to close the dialog."))
    counts = [c for c in page.evaluate("window.__counts") if c > 0]
    assert len(set(counts)) >= 2, f"not streamed token by token: {counts}"
    run = page.evaluate("tb.runs['translate-a']")
    assert run["path"] == "gradio"
    page.wait_for_function("document.querySelector('#tb-waterfall-translate .tb-wf') !== null && "
                           "document.querySelector('#tb-waterfall-translate').innerText.includes('Gradio queue')")
    (wf,) = _waterfalls(page)
    _check_waterfall(wf, run["e2e"], ["page -> handler (Gradio queue, SSE)", "queue wait (engine lock)",
                                      "tokenisation", "encoder pass", "first decoding step", "later tokens",
                                      "detokenisation + hand-off", "transport / Gradio + render"])


@pytest.fixture(scope="module")
def served_url(app_url: str) -> Iterator[str]:
    """`testbed serve` (Marian on torch fp32) in its own process on 127.0.0.1."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "serve", "--engine", "torch", "--precision", "fp32",
                             "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    import httpx

    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"testbed serve exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def test_served_mode_against_testbed_serve(page: Any, served_url: str) -> None:
    page.fill("#tb-pick-translate-a-url textarea, #tb-pick-translate-a-url input", served_url)
    before = _translate(page, "Click OK to close the dialog.")
    _done(page, "translate-a", before)
    german = page.input_value("#tb-output-translate-a textarea")
    assert "Klicken" in german or "Dialog" in german, german
    assert f"served by {served_url}" in page.inner_text("#tb-status-translate")
    metrics = page.inner_text("#tb-metrics-translate-a")
    assert served_url in metrics and "error" not in metrics
    ttft = page.get_attribute("#tb-metrics-translate-a [data-nonce]", "data-engine-ttft-ms")
    assert ttft and float(ttft) > 0  # from the server's return_timing
    run = page.evaluate("tb.runs['translate-a']")
    (wf,) = _waterfalls(page)
    _check_waterfall(wf, run["e2e"], ["send (page -> ui server)", "ui server prepares the call",
                                      "send (ui server -> server)", "intake + tokenisation", "queue wait",
                                      "encoder pass", "first decoding step", "later tokens",
                                      "detokenisation + hand-off", "transport (server -> ui server)",
                                      "relay (ui server)", "transport (ui server -> page)", "render (chunk -> DOM)"])
    sources = {p["name"]: p["source"] for p in wf["phases"]}
    assert sources["encoder pass"] == "engine" and sources["intake + tokenisation"] == "server"
    # a server that is not there: a clear error, nothing sent
    page.fill("#tb-pick-translate-a-url textarea, #tb-pick-translate-a-url input", "http://127.0.0.1:9")
    _done(page, "translate-a", _translate(page, "Click OK."))
    assert "GET /v1/models failed" in page.inner_text("#tb-metrics-translate-a")


def test_chat_streams_and_keeps_the_conversation(page: Any) -> None:
    page.get_by_role("tab", name="Chat").click()
    _pick(page, "tb-pick-chat-a", "engine", "fake")
    for turn in ("hello there", "second turn"):
        before = _nonces(page)
        page.fill("#tb-input-chat textarea", turn)
        page.click("#tb-go-chat")
        _done(page, "chat-a", before)
        page.wait_for_function("document.querySelector('#tb-input-chat textarea').value === ''")  # cleared
    # the conversation is kept: both user turns and both (echoed) answers
    page.wait_for_function("(() => { const t = document.querySelector('#tb-output-chat-a').innerText;"
                           " return t.split('hello there').length === 3 && t.split('second turn').length === 3; })()")
    assert "engine TTFT ms" in page.inner_text("#tb-metrics-chat-a")


def test_results_tab_shows_the_latest_report_and_the_sweep_button_reports(page: Any, runs_dir: Path) -> None:
    page.get_by_role("tab", name="Results").click()
    page.wait_for_function("document.querySelector('#tb-results-where').innerText.includes('No evaluation run')")
    run = runs_dir / "sweep-1"
    run.mkdir()
    (run / "report.md").write_text("# Sweep report\n\n| configuration | BLEU |\n|---|---|\n| torch/int8 | 27.1 |\n")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([1, 2], [2, 1])
    fig.savefig(run / "pareto.png")
    try:
        page.get_by_role("button", name="Refresh").click()
        page.wait_for_function("document.querySelector('#tb-results-report').innerText.includes('Sweep report')")
        assert "sweep-1" in page.inner_text("#tb-results-where")
        assert page.locator("img[src*='pareto']").count() >= 1
        # the sweep button runs `testbed eval` as a child process and reports how it ended
        sweep = runs_dir / "tiny.toml"
        sweep.write_text("")
        page.get_by_label("sweep file for a small sweep").fill(str(sweep))
        page.click("#tb-sweep-go")
        page.wait_for_function("document.querySelector('#tb-sweep-log textarea').value.includes('$ testbed eval')"
                               " && /done:|failed|no `testbed eval`/.test("
                               "document.querySelector('#tb-sweep-log textarea').value)", timeout=120_000)
    finally:
        shutil.rmtree(run)
