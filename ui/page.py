"""The page's own script and style: the browser-side timer, the clock ping and the direct stream.

* ``tb.sync``: pings ``GET /tb/clock`` and keeps the offset of the ping with the smallest round
  trip (server ms - page ms; the page's ``performance.now()`` and the server's
  ``perf_counter_ns`` are both monotonic clocks, so one offset maps one onto the other);
* ``tb.mark`` (the Gradio path): ``performance.now()`` at send, a ``MutationObserver`` on the
  metrics panel for the first and last token in the DOM;
* ``tb.direct`` (the thin path): for each ticket, A then B, ``fetch('/tb/stream?ticket=...')``,
  read the body as it arrives, write each piece straight into the output element and take
  ``performance.now()`` at the send, at each chunk's receipt and right after its DOM write.

``tb.collect()`` hands every run's times to the server (the history and the waterfall).
"""

from __future__ import annotations

HEAD_JS = """
<script>
window.tb = window.tb || {runs: {}};
tb.sync = async function (n) {
  for (let i = 0; i < (n || 5); i++) {
    try {
      const a = performance.now();
      const r = await fetch('/tb/clock', {cache: 'no-store'});
      const j = await r.json();
      const b = performance.now();
      if (tb.rtt === undefined || b - a < tb.rtt) { tb.rtt = b - a; tb.offset = j.t_ns / 1e6 - (a + b) / 2; }
    } catch (e) { /* the page still works; the waterfall says the alignment is missing */ }
  }
};
tb.sync(8);
tb.mark = function (key) {
  const nonce = key + "-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 8);
  const run = {key: key, nonce: nonce, path: "gradio", t0: performance.now(), ttft: null, e2e: null, n: 0,
               done: false, dom_last: null, offset: tb.offset, rtt: tb.rtt};
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
    if (n > r.n) { r.n = n; r.e2e = now - r.t0; r.dom_last = now; r.offset = tb.offset; r.rtt = tb.rtt; }
    if (m.dataset.done === "1") r.done = true;
    tb.show(key);
  };
  if (host.__tbObs) host.__tbObs.disconnect();
  host.__tbObs = new MutationObserver(check);
  host.__tbObs.observe(host, {subtree: true, childList: true, characterData: true, attributes: true});
  return nonce;
};
tb.show = function (key) {
  const r = tb.runs[key];
  const s = document.querySelector("#tb-served-" + key);
  if (!r || !s) return;
  s.textContent = "served TTFT (browser, send -> first token on screen, " + r.path + " path): "
      + (r.ttft === null ? "n/a" : r.ttft.toFixed(1) + " ms")
      + (r.e2e === null ? "" : " | served E2E: " + r.e2e.toFixed(1) + " ms");
};
tb.one = async function (key, tk) {
  const run = {key: key, nonce: tk.id, path: "direct", t0: null, ttft: null, e2e: null, n: 0, done: false,
               recv_last: null, dom_last: null, offset: tb.offset, rtt: tb.rtt, error: tk.error || null,
               chunks: [], events: 0};
  tb.runs[key] = run;
  if (tk.error) { run.done = true; return; }
  const el = document.querySelector(tk.sel);
  const isText = el && el.tagName === "TEXTAREA";
  const put = function (text, append) {
    if (!el) return;
    if (isText) el.value = append ? el.value + text : text; else el.textContent = append ? el.textContent + text : text;
  };
  put("", false);
  run.t0 = performance.now();
  try {
    const res = await fetch("/tb/stream?ticket=" + encodeURIComponent(tk.id), {cache: "no-store"});
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    while (true) {
      const {value, done} = await reader.read();
      if (done) break;
      const recv = performance.now();
      buf += dec.decode(value, {stream: true});
      let i, got = false;
      while ((i = buf.indexOf("\\n\\n")) >= 0) {
        const line = buf.slice(0, i); buf = buf.slice(i + 2);
        if (!line.startsWith("data: ")) continue;
        const ev = JSON.parse(line.slice(6));
        if (ev.p !== undefined) { put(ev.p, true); run.n = ev.n; run.events += 1; got = true; }
        if (ev.error) run.error = ev.error;
        if (ev.done) {
          run.done = true;
          const cur = el ? (isText ? el.value : el.textContent) : "";
          if (typeof ev.text === "string" && ev.text && cur !== ev.text) put(ev.text, false);  // final text
        }
      }
      if (got) {
        const t = performance.now();
        run.recv_last = recv; run.dom_last = t; run.chunks.push(run.n);
        if (run.ttft === null) run.ttft = t - run.t0;
        run.e2e = t - run.t0;
        tb.show(key);
      }
    }
  } catch (e) { run.error = String(e); run.done = true; }
};
tb.direct = async function (ticketsJson) {
  let tickets = {};
  try { tickets = JSON.parse(ticketsJson || "{}"); } catch (e) { tickets = {}; }
  const keys = Object.keys(tickets);
  if (!keys.length) return tb.collect();
  for (const key of keys) {
    await tb.sync(4);  // before the send, outside the timed window: keeps the best offset so far
    await tb.one(key, tickets[key]);
  }
  return tb.collect();
};
tb.collect = function () { return JSON.stringify(tb.runs); };
</script>
"""

CSS = """
.tb-metrics table {border-collapse: collapse; font-size: 0.9em}
.tb-metrics td, .tb-metrics th {padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: right}
.tb-warn {color: #a15c00} .tb-err {color: #b00020; font-weight: 600}
.tb-served {font-family: ui-monospace, monospace; font-size: 0.85em; color: #333}
.tb-live {white-space: pre-wrap; min-height: 1.2em; font-size: 0.95em}
"""

INTRO = """\
# testbed demo
Answers stream token by token.  **engine TTFT** is taken inside the engine
(stream start -> first token id; on a server, its arrival -> first token from `return_timing`);
**served TTFT** is measured by this page (request sent -> first token on screen), and their
difference is the page's overhead.  TPOT = (last - first token) / (N - 1), E2E = last token - start,
tok/s = N / E2E.  Engine load time is shown apart; configuration B runs after A (they never share the CPU).

**Page path**: *direct* streams the answer to the page with a plain `fetch` outside Gradio's queue
(Gradio keeps the controls); *gradio* is the earlier path through Gradio's queue and its SSE.
**Server URL**: leave empty to run the engine in this process, or give `http://HOST:PORT` of a running
`testbed serve` (or any OpenAI-compatible server); A and B may be two servers.
Under each answer, the **waterfall**: one bar per phase from the send to the last token on screen,
each labelled with the clock that took it (page, ui server, engine / server).
"""
