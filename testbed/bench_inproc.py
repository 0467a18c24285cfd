"""The in-process SingleStream job: load, warm up, run a dataset, summarise, score.

Model load time and the first (cold) request are reported apart from the steady-state numbers;
warm-up requests are run and excluded.  Outputs (when ``out_dir`` is given), written atomically:
``records.jsonl`` (one raw record per request) and ``summary.json`` (summary, accuracy,
signature).  Returns the same plus a Markdown rendering.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from testbed.client.inproc import singlestream
from testbed.config import EngineConfig
from testbed.datasets import load_dataset
from testbed.engines.registry import create_engine
from testbed.io import write_json_atomic, write_text_atomic
from testbed.metrics import summary as S
from testbed.metrics.accuracy import score
from testbed.report.text import fmt_ms, kv_table, latency_table
from testbed.signature import signature


def run_bench(
    config: EngineConfig, dataset: str = "test", num_requests: int | None = None, warmup: int = 5,
    out_dir: Path | None = None, progress: bool = True,
) -> dict[str, Any]:
    examples = load_dataset(dataset, limit=num_requests)
    engine = create_engine(config)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=warmup + len(examples), desc=f"singlestream {config.label()}", unit="req",
                   file=sys.stderr, leave=False)

    def tick(done: int, total: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)

    try:
        records = singlestream(engine, examples, warmup=warmup, progress=tick)
    finally:
        if bar is not None:
            bar.close()
        engine.close()
    summ = S.summarize(records, scenario="singlestream").to_dict()
    live = [r for r in records if not r.warmup]
    cold = next((r for r in records if r.warmup), None)
    acc = None
    refs = [ex.reference for ex in examples]
    if all(r is not None for r in refs):
        hyps = [r.output or "" if r.ok else "" for r in live]
        acc = score(hyps, [str(r) for r in refs])
    sig = signature(**engine.describe(), scenario="singlestream", dataset=dataset, num_requests=len(examples),
                    warmup=warmup, decoding="greedy")
    result: dict[str, Any] = {
        "signature": sig, "summary": summ, "accuracy": acc,
        "load_ms": engine.load_ns / 1e6 if engine.load_ns else None,
        "first_request_e2e_ms": S.e2e_ms(cold) if cold else None,
        "percentile_method": S.PERCENTILE_METHOD,
    }
    head = {
        "model": f"{engine.model_info.name} ({engine.model_info.architecture})",
        "configuration": config.label(), "dataset": f"{dataset} ({len(examples)} requests, {warmup} warm-up excluded)",
        "completed / failed": f"{summ.get('completed')} / {summ.get('failed')}",
        "model load (ms)": fmt_ms(result["load_ms"]),
        "first (cold) request E2E (ms)": fmt_ms(result["first_request_e2e_ms"]),
        "output tokens/s": fmt_ms(summ.get("output_throughput"), 1),
    }
    if acc:
        head["BLEU"] = f"{acc['bleu']:.2f} ({acc['bleu_signature']})"
        head["chrF"] = f"{acc['chrf']:.2f} ({acc['chrf_signature']})"
    md = (f"## SingleStream, in-process\n\n{kv_table(head)}\n\n{latency_table(records)}\n\n"
          f"Percentiles: {S.PERCENTILE_METHOD}. TTFT = first token - start; TPOT = (last - first)/(N-1), N>=2; "
          "E2E = last token - start.")
    if out_dir is not None:
        write_text_atomic(out_dir / "records.jsonl", "".join(r.to_json() + "\n" for r in records))
        write_json_atomic(out_dir / "summary.json", result)
        write_text_atomic(out_dir / "summary.md", md + "\n")
        from testbed.report.plots import latency_cdf

        plot = latency_cdf(records, out_dir / "latency_cdf.png",
                           title=f"{engine.model_info.name} {config.label()} singlestream, {dataset}")
        result["plot"] = str(plot) if plot else None
        if plot:
            md += f"\n\nLatency CDF: {plot}"
    result["markdown"] = md
    result["records"] = records
    return result
