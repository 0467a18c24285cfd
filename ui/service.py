"""The demo's engine-facing half, free of Gradio: configurations, a cache of loaded engines with
one lock each, a streaming runner, and the session history.

No timing logic of its own: engine-side timestamps come from :class:`testbed.engines.base.Stream`
(its ``start_ns`` and each token's ``t_ns``), and every number is computed by
:mod:`testbed.metrics.summary` from a :class:`~testbed.metrics.records.RequestRecord` -- while an
answer streams, from a record of the tokens so far.  The browser-side ("served") times are
measured by the page itself (``ui/app.py``) and only stored here.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from testbed.client.inproc import run_one
from testbed.config import DEFAULT_CHAT_MODEL, DEFAULT_TRANSLATION_MODEL, EngineConfig
from testbed.engines.base import Engine, GenerationRequest, Stream
from testbed.engines.registry import ENGINES, engine_class, is_available
from testbed.errors import TestbedError
from testbed.metrics import summary as S
from testbed.metrics.records import RequestRecord

UNAVAILABLE = " (unavailable: "
PRUNING_CHOICES = ("none", "unstructured:0.3", "unstructured:0.5", "structured:0.25", "structured:0.5")
TASK_MODELS = {"translate": DEFAULT_TRANSLATION_MODEL, "chat": DEFAULT_CHAT_MODEL}


def task_models(task: str) -> list[str]:
    """The embedded models of a tab's task, its default first (the chat tab: SmolLM2, then the dialogue model)."""
    from testbed.registry import EMBEDDED

    kind = "translation" if task == "translate" else task
    return [TASK_MODELS[task]] + [n for n, m in EMBEDDED.items() if m.task == kind and n != TASK_MODELS[task]]
TASK_MAX_NEW = {"translate": 128, "chat": 256}


# ------------------------------------------------------------------ configuration pickers
@dataclass(frozen=True)
class EngineOption:
    name: str
    available: bool
    reason: str
    description: str

    @property
    def label(self) -> str:
        return self.name if self.available else f"{self.name}{UNAVAILABLE}{self.reason})"


def engine_options() -> list[EngineOption]:
    """Every registered engine, with whether its runtime is installed (``registry.is_available``)."""
    out = []
    for name, entry in ENGINES.items():
        ok, why = is_available(name)
        out.append(EngineOption(name, ok, why, entry.description))
    return out


def engine_of_label(label: str) -> str:
    return label.split(UNAVAILABLE)[0].strip()


def unavailable_reason(label: str) -> str | None:
    """Why the engine behind a picker label cannot run, or None when it can."""
    name = engine_of_label(label)
    ok, why = is_available(name)
    return None if ok else f"engine {name!r} is not available: {why}"


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # no torch, or a broken CUDA install: the CPU still works
        return False


def devices() -> list[str]:
    return ["cpu", "cuda"] if cuda_available() else ["cpu"]


def precision_choices(engine: str, device: str = "cpu") -> list[str]:
    """The precisions the engine declares for ``device`` (its Capabilities); [] when not available."""
    if not is_available(engine)[0]:
        return []
    caps = engine_class(engine).capabilities
    return [p for p in caps.precisions if device in caps.precision_devices.get(p, caps.devices)]


def pruning_choices(engine: str) -> list[str]:
    if not is_available(engine)[0]:
        return ["none"]
    return list(PRUNING_CHOICES) if engine_class(engine).capabilities.pruning else ["none"]


def thread_choices() -> list[str]:
    n = os.cpu_count() or 1
    return ["default"] + [str(i) for i in sorted({1, 2, 4, 8, n}) if i <= n]


def make_config(task: str, engine: str, precision: str, pruning: str = "none", threads: str | int | None = None,
                device: str = "cpu", max_new_tokens: int | None = None, model: str | None = None) -> EngineConfig:
    """The EngineConfig of a picker selection (validated by EngineConfig itself)."""
    t = None if threads in (None, "", "default") else int(threads)
    return EngineConfig(
        model=model or TASK_MODELS[task], engine=engine_of_label(engine), precision=precision or "fp32",
        device=device or "cpu", threads=t, pruning=pruning or "none",
        max_new_tokens=int(max_new_tokens or TASK_MAX_NEW[task]),
    )


# ------------------------------------------------------------------ engine cache
@dataclass
class Loaded:
    engine: Engine
    lock: threading.Lock
    load_ms: float
    cached: bool  # True when this call found it already loaded
    warmup_ms: float | None = None  # E2E of the warm-up request run right after loading (excluded)


class EngineCache:
    """Loaded engines, one per configuration, each with its own lock (engines are not thread-safe).

    Loading happens under that configuration's lock, so two sessions asking for the same
    configuration load it once.  ``load_ms`` is the engine's own load time (``Engine.load_ns``);
    right after loading, one short warm-up request runs (its E2E is reported, never timed as an
    answer), so the first answer shown is not a cold one.
    """

    WARMUP = GenerationRequest(text="Hello.", max_new_tokens=4, request_id="warmup")

    def __init__(self, factory: Callable[[EngineConfig], Engine] | None = None) -> None:
        if factory is None:
            from testbed.engines.registry import create_engine

            factory = create_engine
        self._factory = factory
        self._guard = threading.Lock()
        self._locks: dict[EngineConfig, threading.Lock] = {}
        self._engines: dict[EngineConfig, Engine] = {}
        self._warmup_ms: dict[EngineConfig, float | None] = {}

    def lock_of(self, config: EngineConfig) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(config, threading.Lock())

    def get(self, config: EngineConfig) -> Loaded:
        lock = self.lock_of(config)
        with lock:
            engine = self._engines.get(config)
            cached = engine is not None
            if engine is None:
                engine = self._factory(config)
                engine.load()
                rec = run_one(engine, self.WARMUP, warmup=True)
                self._warmup_ms[config] = S.e2e_ms(rec)
                self._engines[config] = engine
        return Loaded(engine, lock, (engine.load_ns or 0) / 1e6, cached, self._warmup_ms.get(config))

    def loaded(self) -> list[EngineConfig]:
        with self._guard:
            return list(self._engines)

    def close(self) -> None:
        with self._guard:
            engines, self._engines = list(self._engines.values()), {}
        for e in engines:
            e.close()


# ------------------------------------------------------------------ streaming
@dataclass
class Snapshot:
    """The state of one answer as it streams: text so far and the record of the tokens so far."""

    text: str
    record: RequestRecord | None
    done: bool = False
    error: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def n_tokens(self) -> int:
        return self.record.n_out if self.record is not None else 0


def _partial_record(stream: Stream, n: int) -> RequestRecord:
    ev = stream.events[:n]
    return RequestRecord(
        request_id=stream.request_id, schedule_ns=stream.start_ns, send_ns=stream.start_ns,
        chunk_ns=[e.t_ns for e in ev], chunk_tokens=[1] * len(ev), n_in=stream.n_in, n_out=len(ev),
        decode_start_ns=stream.decode_start_ns, encoder_done_ns=stream.encoder_done_ns,
    )


def stream_answer(loaded: Loaded, request: GenerationRequest, timeout_s: float = 600.0) -> Iterator[Snapshot]:
    """Run ``request`` on the engine in a producer thread (holding the engine's lock) and yield a
    :class:`Snapshot` whenever new tokens arrived; several tokens that arrived while the consumer
    was busy come as one snapshot.  Closing this iterator (the page went away) stops decoding.
    Errors never raise: the last snapshot carries them.
    """
    q: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    cancel = threading.Event()

    def produce() -> None:
        stream: Stream | None = None
        try:
            with loaded.lock:
                if cancel.is_set():  # the page went away while another request held the engine
                    q.put(("error", ("cancelled before it started", None)))
                    return
                stream = loaded.engine.stream(request)
                q.put(("start", stream))
                for _ in stream:
                    q.put(("tok", None))
                    if cancel.is_set():
                        stream.close()
                        break
            q.put(("done", stream.record()))
        except Exception as exc:  # shown in the page; the app stays up
            msg = str(exc) if isinstance(exc, TestbedError) else f"{type(exc).__name__}: {exc}"
            q.put(("error", (msg, stream.record() if stream is not None else None)))

    worker = threading.Thread(target=produce, name="ui-engine", daemon=True)
    worker.start()
    stream: Stream | None = None
    n_seen = -1
    try:
        while True:
            try:
                kind, payload = q.get(timeout=timeout_s)
            except queue.Empty:
                yield Snapshot("", None, done=True, error=f"no answer within {timeout_s:.0f} s")
                return
            final: tuple[str, Any] | None = None
            pending = [(kind, payload)]
            while True:  # coalesce what is already there
                try:
                    pending.append(q.get_nowait())
                except queue.Empty:
                    break
            for k, p in pending:
                if k == "start":
                    stream = p
                elif k in ("done", "error"):
                    final = (k, p)
            if final is not None:
                k, p = final
                if k == "done":
                    rec: RequestRecord = p
                    yield Snapshot(rec.output or "", rec, done=True, error=None if rec.ok else rec.error,
                                   warnings=tuple(rec.extra.get("warnings", ())))
                else:
                    msg, rec = p
                    text = rec.output or "" if rec is not None else ""
                    yield Snapshot(text, rec, done=True, error=msg,
                                   warnings=tuple(rec.extra.get("warnings", ())) if rec is not None else ())
                return
            if stream is not None:
                n = len(stream.events)
                if n != n_seen:
                    n_seen = n
                    text = "".join(e.text for e in stream.events[:n])
                    yield Snapshot(text, _partial_record(stream, n), warnings=stream.warnings)
    finally:
        cancel.set()


# ------------------------------------------------------------------ numbers of one answer
def answer_metrics(rec: RequestRecord | None) -> dict[str, float | int | None]:
    """TTFT / TPOT / E2E / encoder (ms), tokens and tokens/s of one (possibly partial) answer.

    ``tokens_per_s = N / E2E`` (output tokens over the answer's end-to-end time, TTFT included).
    """
    if rec is None or not rec.chunk_ns:
        return {"ttft_ms": None, "tpot_ms": None, "e2e_ms": None, "encoder_ms": None, "tokens": 0,
                "tokens_per_s": None, "n_in": rec.n_in if rec else None}
    e2e = S.e2e_ms(rec)
    return {
        "ttft_ms": S.ttft_ms(rec), "tpot_ms": S.tpot_ms(rec), "e2e_ms": e2e, "encoder_ms": S.encoder_ms(rec),
        "tokens": rec.n_out, "tokens_per_s": rec.n_out / e2e * 1000 if e2e else None, "n_in": rec.n_in,
    }


# ------------------------------------------------------------------ session history
HISTORY_COLUMNS = ["#", "tab", "slot", "configuration", "in tok", "out tok", "engine TTFT ms",
                   "served TTFT ms", "Gradio overhead ms", "TPOT ms", "E2E ms", "tok/s", "status"]
SUMMARY_COLUMNS = ["configuration", "n", "metric", "p50", "p90"]
SUMMARY_METRICS = (("engine TTFT ms", "ttft_ms"), ("served TTFT ms", "served_ttft_ms"),
                   ("Gradio overhead ms", "overhead_ms"), ("TPOT ms", "tpot_ms"), ("E2E ms", "e2e_ms"),
                   ("tok/s", "tokens_per_s"))


@dataclass
class HistoryEntry:
    tab: str
    slot: str
    config: str
    metrics: dict[str, Any]
    error: str | None = None
    served_ttft_ms: float | None = None
    created: float = field(default_factory=time.time)

    @property
    def overhead_ms(self) -> float | None:
        t = self.metrics.get("ttft_ms")
        return None if self.served_ttft_ms is None or t is None else self.served_ttft_ms - t

    def value(self, key: str) -> Any:
        if key == "served_ttft_ms":
            return self.served_ttft_ms
        if key == "overhead_ms":
            return self.overhead_ms
        return self.metrics.get(key)


def _f(v: Any, spec: str = ".1f") -> str:
    return S.fmt(v, spec) if v is None or isinstance(v, (int, float)) else str(v)


def history_rows(entries: Sequence[HistoryEntry]) -> list[list[Any]]:
    rows = []
    for i, h in enumerate(entries, 1):
        m = h.metrics
        rows.append([i, h.tab, h.slot, h.config, _f(m.get("n_in"), "d"), _f(m.get("tokens"), "d"),
                     _f(m.get("ttft_ms")), _f(h.served_ttft_ms), _f(h.overhead_ms), _f(m.get("tpot_ms"), ".2f"),
                     _f(m.get("e2e_ms")), _f(m.get("tokens_per_s")), "ok" if h.error is None else h.error])
    return rows


def history_summary(entries: Sequence[HistoryEntry]) -> list[list[Any]]:
    """p50 / p90 per configuration and metric over the completed answers so far (numpy linear)."""
    rows: list[list[Any]] = []
    configs: dict[str, list[HistoryEntry]] = {}
    for h in entries:
        if h.error is None:
            configs.setdefault(f"{h.tab}: {h.config}", []).append(h)
    for cfg, hs in configs.items():
        for label, key in SUMMARY_METRICS:
            st = S.percentiles([h.value(key) for h in hs], (50, 90))
            rows.append([cfg, st["count"], label, _f(st["p50"], ".2f"), _f(st["p90"], ".2f")])
    return rows
