"""The Load-test tab's work: a short scripted-client scenario on one loaded configuration.

A scenario is a function ``(loaded, examples, warmup, max_new_tokens, progress, batch) -> records``
registered in :data:`SCENARIOS`; everything after it (summary, percentile table, histogram, the
waterfall of the median request) is shared.  There are the in-process SingleStream of
:mod:`testbed.client.inproc` and closed-loop users on the server's batcher in this process
(:class:`~testbed.client.targets.InprocTarget`, with the batching mode and max batch of the
:class:`~testbed.serve.batcher.BatchConfig`; an engine that cannot let rows join a running batch
refuses ``continuous`` with a ``ConfigError``, shown as the tab's error).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from testbed.client.inproc import singlestream
from testbed.datasets import Example, load_dataset
from testbed.metrics import summary as S
from testbed.metrics.records import RequestRecord
from testbed.report.text import kv_table, latency_table
from testbed.report.waterfall import median_record, of_record
from testbed.serve.batcher import BatchConfig
from testbed.ui.service import Loaded

Progress = Callable[[int, int], None]
Scenario = Callable[[Loaded, Sequence[Example], int, int | None, Progress | None, BatchConfig],
                    list[RequestRecord]]

#: generated tokens at most per request in a load test (short runs on a CPU)
LOAD_MAX_NEW = {"translate": 128, "chat": 64}
LOAD_DATASET = {"translate": "test", "chat": "chat"}


def _inproc_singlestream(loaded: Loaded, examples: Sequence[Example], warmup: int, max_new: int | None,
                         progress: Progress | None, batch: BatchConfig) -> list[RequestRecord]:
    with loaded.lock:  # the engine is not thread-safe: the demo's answers wait meanwhile
        return singlestream(loaded.engine, examples, warmup=warmup, max_new_tokens=max_new, progress=progress)


def _batched_users(loaded: Loaded, examples: Sequence[Example], warmup: int, max_new: int | None,
                   progress: Progress | None, batch: BatchConfig) -> list[RequestRecord]:
    """``max_batch_size`` closed-loop users on the server's batcher (no HTTP), scheduler timing kept."""
    from testbed.client.loadgen import LoadSpec, run
    from testbed.client.targets import InprocTarget

    total = warmup + len(examples)
    spec = LoadSpec("concurrency", num_requests=len(examples), concurrency=batch.max_batch_size, warmup=warmup)
    with loaded.lock:
        batch.check(loaded.engine)  # continuous on an engine that cannot join rows: refused, never downgraded
        target = InprocTarget(loaded.engine, batch, max_tokens=max_new, return_timing=True)
        return list(run(target, examples, spec, progress=(lambda k: progress(k, total)) if progress else None))


BATCHED = "concurrency (in-process batcher)"
SCENARIOS: dict[str, Scenario] = {"singlestream (in-process)": _inproc_singlestream, BATCHED: _batched_users}


def histogram(records: Sequence[RequestRecord], title: str = "") -> Any:
    """A matplotlib Figure: histograms of TTFT and E2E (ms) of the completed, non-warm-up records."""
    from matplotlib.figure import Figure  # no pyplot: safe in worker threads

    live = [r for r in records if S.is_completed(r) and not r.warmup]
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2)
    for ax, (name, fn) in zip(axes, (("TTFT", S.ttft_ms), ("E2E", S.e2e_ms))):
        vals = [v for v in map(fn, live) if v is not None]
        if vals:
            ax.hist(vals, bins=min(30, max(5, len(vals) // 2)), color="#4c72b0")
            st = S.percentiles(vals, (50, 90))
            for key, style in (("p50", "--"), ("p90", ":")):
                ax.axvline(st[key], color="k", ls=style, lw=1, label=f"{key} {st[key]:.1f} ms")  # type: ignore[arg-type]
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no completed requests", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{name} (ms)")
        ax.set_xlabel("ms")
        ax.set_ylabel("requests")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def median_waterfall(records: Sequence[RequestRecord], title: str = "") -> Any:
    """The waterfall figure of the completed request with the median E2E (None when none completed)."""
    from testbed.report.waterfall_plot import figure

    live = [r for r in records if S.is_completed(r) and not r.warmup]
    if not live:
        return None
    rec = median_record(live)
    return figure([of_record(rec, label=f"request {rec.request_id} (median E2E)")], title)


def run_loadtest(loaded: Loaded, task: str, scenario: str, num_requests: int, warmup: int,
                 progress: Progress | None = None, batch: BatchConfig | None = None) -> tuple[str, Any, Any]:
    """Run ``scenario`` over the first ``num_requests`` examples of the task's test set."""
    fn = SCENARIOS.get(scenario)
    if fn is None:
        return f"**unknown scenario** {scenario!r}; known: {', '.join(SCENARIOS)}", None, None
    if num_requests < 1 or warmup < 0:
        return (f"**not run** -- requests must be >= 1 (got {num_requests}) and warm-up >= 0 (got {warmup})",
                None, None)
    batch = batch or BatchConfig()
    examples = load_dataset(LOAD_DATASET[task], limit=num_requests)
    max_new = LOAD_MAX_NEW[task]
    records = fn(loaded, examples, warmup, max_new, progress, batch)
    summ = S.summarize(records, scenario=scenario)
    cfg = loaded.engine.config
    head = {
        "scenario": scenario, "configuration": cfg.label(), "model": loaded.engine.model_info.name,
        "requests": f"{len(examples)} from `{LOAD_DATASET[task]}` (max {max_new} new tokens), "
                    f"{summ.warmup_excluded} warm-up excluded",
        "completed / failed": f"{summ.completed} / {summ.failed}"
                              + (f" ({', '.join(f'{k}: {v}' for k, v in summ.errors.items())})" if summ.errors else ""),
        "duration (s)": S.fmt(summ.duration_s, ".2f"),
        "requests/s": S.fmt(summ.request_throughput, ".2f"),
        "output tokens/s": S.fmt(summ.output_throughput, ".1f"),
        "model load (ms)": S.fmt(loaded.load_ms, ".0f"),
    }
    if scenario == BATCHED:
        head["batching"] = batch.label()
    md = (f"{kv_table(head)}\n\n{latency_table(records)}\n\n"
          f"Percentiles: {S.PERCENTILE_METHOD}; TTFT = first token - scheduled start, "
          "TPOT = (last - first) / (N - 1), E2E = last token - scheduled start.")
    return md, histogram(records, f"{cfg.label()} {scenario}"), median_waterfall(records, f"{cfg.label()} {scenario}")
