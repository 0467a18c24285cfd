"""The ``testbed`` command line: thin subcommands, one library call each.

The library never prints or exits; this module does both.  Errors the user can fix
(:class:`testbed.errors.TestbedError`) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testbed.config import DEFAULT_CHAT_MODEL, DEFAULT_TRANSLATION_MODEL, DEVICES, PRECISIONS, EngineConfig
from testbed.errors import TestbedError

QUICK_START = """\
quick start:
  testbed translate "Select the range of cells that you want to sort."
  echo "Click OK to close the dialog." | testbed translate --engine torch --precision int8
  testbed chat                                   # SmolLM2-135M-Instruct, streaming
  testbed models                                 # the embedded models
  testbed bench --scenario singlestream          # TTFT/TPOT/E2E percentiles + BLEU on the test set
  testbed serve --max-batch-size 8 &             # OpenAI-compatible server on 127.0.0.1:8000
  testbed bench --url http://127.0.0.1:8000 --scenario server --rate 20 --num-requests 200
  testbed eval --sweep default --out runs/eval   # BLEU vs latency over engines x precisions, gate, Pareto

metrics (ms): TTFT = first token - scheduled start; TPOT = (last - first) / (tokens - 1);
E2E = last token - scheduled start.  Percentiles: numpy linear method.
"""


def _engine_args(p: argparse.ArgumentParser, default_model: str, warmup_flag: bool = True) -> None:
    g = p.add_argument_group("serving configuration")
    g.add_argument("--model", default=default_model,
                   help=f"registry name, local directory or hub id (default: {default_model})")
    g.add_argument("--engine", default="torch", help="engine name (see `testbed engines`; default: torch)")
    g.add_argument("--precision", default="fp32", help=f"one of {', '.join(PRECISIONS)} (default: fp32)")
    g.add_argument("--device", default="cpu", help=f"one of {', '.join(DEVICES)} (default: cpu)")
    g.add_argument("--pruning", default="none", help="none (default), unstructured:S or structured:F")
    g.add_argument("--threads", type=int, default=None, help="intra-op threads (default: runtime default)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="generated tokens at most (default 128, chat 256)")
    g.add_argument("--src-lang", default=None,
                   help="source language code of a multilingual model (mBART en_XX, M2M100 en, NLLB eng_Latn)")
    g.add_argument("--tgt-lang", default=None,
                   help="target language code of a multilingual model (needed by mBART, M2M100, NLLB)")
    if warmup_flag:
        g.add_argument("--no-warmup", dest="warmup", action="store_false",
                       help="time the very first (cold) request too; by default one warm-up request runs first")
    g.add_argument("--on-overflow", default="truncate", choices=["truncate", "refuse"],
                   help="input longer than the model's limit: truncate with a warning (default) or refuse")


def _config(args: argparse.Namespace, default_new: int = 128) -> EngineConfig:
    return EngineConfig(
        model=args.model, engine=args.engine, precision=args.precision, device=args.device,
        threads=args.threads, max_new_tokens=args.max_new_tokens or default_new, on_overflow=args.on_overflow,
        pruning=args.pruning, src_lang=args.src_lang, tgt_lang=args.tgt_lang,
        max_input_tokens=getattr(args, "max_input_tokens", None),
    )


def _engine(args: argparse.Namespace, default_new: int = 128) -> Any:
    from testbed.engines.registry import create_engine

    engine = create_engine(_config(args, default_new))
    if getattr(args, "warmup", 0):
        # the first call pays one-off costs (allocations, kernel selection): run it unseen and
        # report it, so the timings printed are steady-state ones
        from testbed.client.inproc import run_one
        from testbed.engines.base import GenerationRequest
        from testbed.metrics import summary as S

        rec = run_one(engine, GenerationRequest(text="Hello.", max_new_tokens=4), warmup=True)
        print(f"(model load {(engine.load_ns or 0) / 1e6:.0f} ms; warm-up request {S.fmt(S.e2e_ms(rec), '.0f')} ms, "
              "excluded)", file=sys.stderr)
    return engine


def _stream_to(out: Any, stream: Any) -> None:
    for ev in stream:
        if ev.text:
            out.write(ev.text)
            out.flush()
    out.write("\n")


# ---------------------------------------------------------------------- subcommands
def cmd_translate(args: argparse.Namespace) -> int:
    from testbed.report.text import request_line

    texts = list(args.text) or [line.rstrip("\n") for line in sys.stdin]
    texts = [t for t in texts if t.strip()] if not args.text else texts
    if not texts:
        raise TestbedError("nothing to translate: pass TEXT arguments or lines on stdin")
    engine = _engine(args)
    if engine.is_chat:
        raise TestbedError(f"model {args.model!r} is a chat model; use `testbed chat` (or a translation model)")
    for text in texts:
        stream = engine.stream(text)
        for w in stream.warnings:
            print(f"warning: {w}", file=sys.stderr)
        if args.json:
            stream.run()
            rec = stream.record()
            from testbed.metrics import summary as S

            print(json.dumps({"source": text, "translation": stream.text, "ttft_ms": S.ttft_ms(rec),
                              "tpot_ms": S.tpot_ms(rec), "e2e_ms": S.e2e_ms(rec), "encoder_ms": S.encoder_ms(rec),
                              "output_tokens": rec.n_out, "input_tokens": rec.n_in,
                              "finish_reason": stream.finish_reason, "warnings": list(stream.warnings)},
                             ensure_ascii=False))
        else:
            _stream_to(sys.stdout, stream)
            print(request_line(stream.record()))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from testbed.report.text import request_line

    engine = _engine(args, default_new=256)
    if not engine.is_chat:
        raise TestbedError(f"model {args.model!r} is a translation model; use `testbed translate`")
    interactive = sys.stdin.isatty()
    history: list[dict[str, str]] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    if interactive:
        print(f"chat with {engine.model_info.name} on {engine.config.label()} "
              "(/reset clears the history, /quit or Ctrl-D ends)")
    while True:
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not interactive and line == "":
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            history = history[:1] if args.system else []
            continue
        history.append({"role": "user", "content": line})
        msgs = history if not args.no_history else history[-1:]
        stream = engine.stream(msgs)
        for w in stream.warnings:
            print(f"warning: {w}", file=sys.stderr)
        sys.stdout.write("bot> ")
        _stream_to(sys.stdout, stream)
        history.append({"role": "assistant", "content": stream.text})
        print(request_line(stream.record()))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from testbed.registry import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("| name | task | architecture | size (MB) | source |\n|---|---|---|---:|---|")
    for r in rows:
        size = r["size_mb"] if r["size_mb"] is not None else "not built yet"
        print(f"| {r['name']} | {r['task']} | {r['architecture']} | {size} | {r['source']} |")
    return 0


def cmd_engines(args: argparse.Namespace) -> int:
    from testbed.engines.registry import ENGINES, is_available

    print("| engine | available | description |\n|---|---|---|")
    for name, entry in ENGINES.items():
        ok, why = is_available(name)
        print(f"| {name} | {'yes' if ok else 'no: ' + why} | {entry.description} |")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from testbed.bench_inproc import run_bench
    from testbed.client.cli import cmd_load, wants_load

    default_ds = "chat" if args.model == DEFAULT_CHAT_MODEL else "test"
    if wants_load(args):
        print(cmd_load(args, _config(args, default_new=128), default_ds)["markdown"])
        return 0
    result = run_bench(
        _config(args, default_new=128), dataset=args.dataset or default_ds, num_requests=args.num_requests,
        warmup=args.warmup, out_dir=Path(args.out) if args.out else None, progress=not args.no_progress,
    )
    print(result["markdown"])
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from testbed.serve.cli import cmd_serve as run_serve

    if args.backend == "ray":
        from testbed.serve.cli import cmd_serve_ray

        return cmd_serve_ray(args, _config(args))
    return run_serve(args, _engine(args))
def cmd_ui(args: argparse.Namespace) -> int:
    import importlib.util

    from testbed.errors import MissingExtraError

    if importlib.util.find_spec("gradio") is None:
        raise MissingExtraError("testbed ui", "ui", "gradio")
    from testbed.ui.app import OFFLINE_ENV, launch  # imports gradio: only for this subcommand

    urls = list(args.url or [])
    if len(urls) > 2:
        raise TestbedError(f"--url was given {len(urls)} times; give it once (configuration A) or twice (A and B)")
    for u in urls:
        if not u.startswith(("http://", "https://")):
            raise TestbedError(f"--url {u!r} is not accepted: give http://HOST:PORT of a running `testbed serve` "
                               "or another OpenAI-compatible server")
    os.environ.update(OFFLINE_ENV)
    try:
        launch(port=args.port, runs_dir=args.runs_dir, urls=urls)
    except OSError as exc:  # Gradio: the port is taken
        raise TestbedError(f"cannot start the demo on 127.0.0.1:{args.port or '7860-7959'}: {exc}; "
                           "pick a free port with --port N") from exc
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="testbed", description="Latency testbed for translation and chat models.",
        epilog=QUICK_START, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"testbed {__import__('testbed').__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    t = sub.add_parser("translate", help="translate sentences (args or stdin) with timings",
                       description="Translate each TEXT (or each stdin line); print it with TTFT / TPOT / E2E.")
    t.add_argument("text", nargs="*", help="sentences to translate (default: one per stdin line)")
    t.add_argument("--json", action="store_true", help="one JSON object per sentence")
    _engine_args(t, DEFAULT_TRANSLATION_MODEL)
    t.set_defaults(func=cmd_translate)

    c = sub.add_parser("chat", help="interactive streaming chat (stdin lines when not a terminal)",
                       description="Chat with a model; answers stream token by token, then their timings. "
                                   "When stdin is not a terminal, each line is one user turn; exits at EOF.")
    c.add_argument("--system", default=None, help="system prompt")
    c.add_argument("--no-history", action="store_true", help="send each turn alone, without the conversation")
    _engine_args(c, DEFAULT_CHAT_MODEL)
    c.set_defaults(func=cmd_chat)

    m = sub.add_parser("models", help="list the embedded models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    e = sub.add_parser("engines", help="list engines and whether their runtime is installed")
    e.set_defaults(func=cmd_engines)

    b = sub.add_parser("bench", help="run a scenario in-process and report latency percentiles + accuracy",
                       description="SingleStream in-process: warm-up, then the dataset one request at a time; "
                                   "prints TTFT / TPOT / E2E percentiles and BLEU / chrF against the references.")
    b.add_argument("--scenario", default="singlestream",
                   help="singlestream (default), server (Poisson --rate), offline (all at once), concurrency (N users)")
    b.add_argument("--dataset", default=None,
                   help="test | dev | chat | a .tsv/.txt/.jsonl path (default: test; chat for the chat model)")
    b.add_argument("--num-requests", type=int, default=None, help="first N examples (default: all)")
    b.add_argument("--warmup", type=int, default=5, help="warm-up requests, run and excluded (default 5)")
    b.add_argument("--out", default=None, help="directory for records.jsonl and summary.json")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    _engine_args(b, DEFAULT_TRANSLATION_MODEL, warmup_flag=False)
    from testbed.client.cli import add_load_args

    add_load_args(b)
    b.set_defaults(func=cmd_bench)

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (streaming, dynamic batching, admission control)",
                       description="Serve one model: POST /v1/completions and /v1/chat/completions (stream or not), "
                                   "GET /health and /metrics. Bound to 127.0.0.1 unless --host says otherwise.")
    _engine_args(s, DEFAULT_TRANSLATION_MODEL, warmup_flag=False)
    from testbed.serve.cli import add_serve_args

    add_serve_args(s)
    s.set_defaults(func=cmd_serve)
    from testbed.eval.cli import add_parsers as add_eval_parsers

    add_eval_parsers(sub)  # eval, report
    from testbed import cli_prune

    cli_prune.add_parser(sub)
    from testbed.scale import cli as scale_cli

    scale_cli.add_parser(sub)  # plan
    from testbed.export.cli import add_parser as add_export

    add_export(sub)
    u = sub.add_parser("ui", help="the Gradio demo on 127.0.0.1 (streaming, live latency, side by side)",
                       description="Start the demo on 127.0.0.1 (no share link, no analytics) and print its URL.")
    u.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    u.add_argument("--runs-dir", default="runs",
                   help="where the Results tab looks for evaluation runs, and the start configuration comes from "
                        "(the newest sweep's fastest configuration that passed the gate; default runs)")
    u.add_argument("--url", action="append", metavar="URL",
                   help="served mode: send configuration A's requests to this running `testbed serve` (or any "
                        "OpenAI-compatible server); give it twice for A and B (default: engines in this process)")
    u.set_defaults(func=cmd_ui)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
