"""int8-auto candidates on dev *and* test: does the dev-set choice hold on the test set?

Builds (in a scratch directory) each dynamic-int8 recipe named on the command line from the fp32
ONNX artefact of marian-en-de, decodes the whole dev set (601) and test set (1200) greedily in
batches of 32 over the set sorted by length (the sweep's Offline order, through the ONNX Runtime
engine's ``generate``), and gates each against the fp32 graphs' outputs with the sweep's rule and
verdict (testbed.eval.gate: BLEU >= 0.99 x fp32, length ratio in [0.9, 1.1], paired-bootstrap 95%
interval of BLEU - fp32, 1000 samples).  The fp32 graphs give the same test outputs as torch fp32
(exact match 100% in bench/results/eval_default_report.md), so this is the sweep's gate.  No timing.

    python bench/int8_auto.py --ranking dec1.cross_attn,enc0.ffn,dec1.self_attn \\
        --candidates ff0,tf0,ft0,tt0,ff1,tf1,ff2 --out bench/results/int8_auto_marian.md

A candidate ``xyk``: dynamic int8, x = per-channel (t/f), y = reduced range (t/f), k = the first k
groups of ``--ranking`` (the sensitivity ranking the search measured) kept in fp32; ``wk``: 8-bit
weight-only MatMulNBits (the search's ``weight-only`` scheme) with the first k groups in fp32.
Fidelity = BLEU against the fp32 graphs' outputs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from testbed.datasets import load_dataset
from testbed.export.int8_auto import SearchSettings, _engine, _gate, decode_dev, matmul_groups, quantize_variant
from testbed.export.onnx_export import ensure_onnx
from testbed.signature import git_sha, result_header

MODEL = "marian-en-de"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranking", default="", help="group names, most sensitive first (from an int8-auto manifest)")
    ap.add_argument("--candidates", default="ff0,tf0,ft0,tt0")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    git_sha()  # now, so that later edits cannot relabel the run
    ranking = [g for g in args.ranking.split(",") if g]
    s = SearchSettings()
    base = ensure_onnx(MODEL, "fp32")
    groups = matmul_groups(base, json.loads((base / "onnx_config.json").read_text()))
    unknown = [g for g in ranking if g not in groups]
    if unknown:
        ap.error(f"--ranking: unknown groups {unknown}; the graph has {', '.join(groups)}")
    sets = {name: load_dataset(name) for name in ("dev", "test")}
    texts = {k: [ex.text or "" for ex in v] for k, v in sets.items()}
    refs = {k: [ex.reference or "" for ex in v] for k, v in sets.items()}

    def run(art: Path) -> dict[str, list[tuple[str, int]]]:
        eng = _engine(art, MODEL, "none", None, s.max_new_tokens)
        try:
            return {k: decode_dev(eng, texts[k], s.batch) for k in texts}
        finally:
            eng.close()

    fp32 = run(base)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="int8auto-"))
    try:
        for i, c in enumerate(args.candidates.split(",")):
            if c[0] == "w":
                scheme, pc, rr, k = "weight-only", False, False, int(c[1:])
            else:
                scheme, pc, rr, k = "dynamic", c[0] == "t", c[1] == "t", int(c[2:])
            art = quantize_variant(base, work / f"v{i}", groups, ranking[:k], pc, rr, scheme)
            outs = run(art)
            res = {name: _gate(outs[name], fp32[name], refs[name], s) for name in texts}
            rows.append((scheme, pc, rr, ranking[:k], res))
            print(c, json.dumps(res), file=sys.stderr, flush=True)
            shutil.rmtree(art)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fp32_bleu = {k: _gate(fp32[k], fp32[k], refs[k], SearchSettings(bootstrap_samples=0))["dev_bleu"] for k in texts}
    lines = [f"# int8-auto candidates on dev and test ({MODEL}, ONNX Runtime int8)", "",
             f"fp32 graphs: dev BLEU {fp32_bleu['dev']:.2f} ({len(texts['dev'])} sentences), test BLEU "
             f"{fp32_bleu['test']:.2f} ({len(texts['test'])}); gate: BLEU >= 0.99 x fp32, length ratio in [0.9, 1.1], "
             "verdict from the paired-bootstrap 95% interval of BLEU - fp32 (testbed.eval.gate).", "",
             "| scheme | per-channel | reduced range | groups kept in fp32 | dev BLEU (% of fp32) | dev fidelity | "
             "dev ΔBLEU 95% CI | dev verdict | test BLEU (% of fp32) | test fidelity | test ΔBLEU 95% CI | "
             "test verdict |",
             "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---|"]
    for scheme, pc, rr, kept, res in rows:
        d, t = res["dev"], res["test"]
        opts = "- | -" if scheme == "weight-only" else f"{pc} | {rr}"
        lines.append(f"| {scheme} | {opts} | {', '.join(kept) or '-'} | {d['dev_bleu']:.2f} ({d['pct_of_fp32']}) | "
                     f"{d['fidelity']:.2f} | {d['dev_delta_ci95']} | {d['dev_verdict']} | {t['dev_bleu']:.2f} "
                     f"({t['pct_of_fp32']}) | {t['fidelity']:.2f} | {t['dev_delta_ci95']} | {t['dev_verdict']} |")
    cmd = "python bench/int8_auto.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join(lines) + "\n"
    if args.out:
        from testbed.io import write_text_atomic

        header = result_header(cmd, ranking=", ".join(ranking) or "-", batch=s.batch, threads="ORT default",
                               rounds="1 (each candidate decodes dev and test once; no timing)")
        write_text_atomic(Path(args.out), header + "\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
