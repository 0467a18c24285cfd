"""Greedy decoding over an exported ONNX artefact (the names it relies on: :mod:`.contract`).

Used by the ONNX Runtime engine and by the exporter's validation step.  Per step the decoder runs
through an IO binding: the cache tensors the previous step produced (``present_*``, as
``OrtValue`` objects left where the execution provider put them) are bound as the next step's
``past_*`` without a copy through numpy; only the logits come back to the host for the greedy
choice.  Cross-attention keys/values of a seq2seq model come from the encoder graph once per
request and stay bound for every step.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from testbed.engines.onnxruntime.contract import (
    DECODER,
    ENCODER,
    HEAD_PREFIX,
    LOGITS,
    META,
    NEXT_IDS,
    NO_EOS,
    PAST,
    PRESENT,
)
from testbed.errors import ConfigError, TestbedError

ENCODER_DONE_MARK = "encoder_done"

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


class ProviderFallbackError(TestbedError):
    """ONNX Runtime did not load the execution provider that was asked for."""


def check_providers(session: Any, requested: str) -> None:
    """Raise :class:`ProviderFallbackError` unless ``requested`` is among the session's providers.

    ONNX Runtime silently falls back to the CPU provider when a GPU provider cannot load (missing
    CUDA/cuDNN/TensorRT libraries, wrong driver): the numbers would then be CPU numbers.
    """
    got = list(session.get_providers())
    if requested not in got:
        raise ProviderFallbackError(
            f"ONNX Runtime did not load {requested} (session providers: {', '.join(got) or 'none'}); "
            "it would silently run on the CPU. Check that onnxruntime-gpu (not onnxruntime) is installed "
            "and that its CUDA/cuDNN (and TensorRT) libraries match the driver; see the warnings ONNX Runtime "
            "printed above, or use --device cpu"
        )


@dataclass(frozen=True)
class SessionSettings:
    """How sessions are created: device/provider, threads, spinning, graph optimisation level."""

    provider: str = "CPUExecutionProvider"
    threads: int | None = None
    spinning: bool = False
    graph_opt: str = "all"  # disable | basic | extended | all
    fp16: bool = False  # TensorRT: build fp16 engines
    device_id: int = 0
    # IO binding (cache tensors stay OrtValues where the provider put them): always on a GPU; on the
    # CPU, plain run() with numpy arrays (which ONNX Runtime wraps without copying) measured no slower
    io_binding: bool = False
    # ONNX Runtime's profiler: each session writes <profile_prefix>_<graph>_<date>.json (bench/ort_step.py)
    profile_prefix: str = ""
    # the greedy choice in the decoder graph's head (contract.NEXT_IDS), or over the logits
    # in numpy with the head stripped from the session's graph (ONNX Runtime runs every node, asked
    # for or not).  On the CPU numpy is faster: ORT's ArgMax over 58k Marian logits took ~6x numpy's
    # time and the masking ops more again (bench/results/ort_step_profile.md); the engine uses the
    # head on GPU providers only, where it saves the logits' copy to the host
    greedy_in_graph: bool = True
    # ONNX Runtime's SkipLayerNormFusion (Add + LayerNormalization -> SkipLayerNormalization) on the CPU
    # provider, per graph (FUSE_SKIP_LAYERNORM): off by default.  Its CPU kernel measured slower than the
    # two nodes it replaces in the Marian int8 encoder (many rows a call) and no faster in the decoder
    # step (one row a call; bench/results/ort_cpu_paths.md); GPU providers keep ONNX Runtime's default
    fuse_skip_layernorm: str = "none"
    # Engine.generate: the greedy loop inside ONNX Runtime, several steps per run() call
    # (testbed.engines.onnxruntime.loop); CPU provider, seq2seq graphs with a greedy head only
    greedy_loop: bool = False
    # an artefact whose greedy head is bounded (int4-lossless: testbed.export.lossless) decodes with
    # it on the CPU, its fp32 logits left out of the session; False: the session keeps the fp32
    # logits (and, with greedy_in_graph off, chooses over them in numpy as for any other artefact;
    # bench/bounded_head.py measures one against the other)
    bounded_head: bool = True

    @property
    def on_gpu(self) -> bool:
        return self.provider != "CPUExecutionProvider"


GRAPH_OPT_LEVELS = ("disable", "basic", "extended", "all")
FUSE_SKIP_LAYERNORM = ("none", "decoder", "all")  # the CPU sessions whose graphs get SkipLayerNormFusion


def make_session(path: Path, s: SessionSettings, model: bytes | None = None, *, step: bool = False) -> Any:
    """A session for the graph ``path`` (or for ``model``, that graph changed in memory); ``step``: a
    decoding step's graph (the decoder, the greedy loop), which ``fuse_skip_layernorm="decoder"`` fuses too."""
    import onnxruntime as ort

    if s.graph_opt not in GRAPH_OPT_LEVELS:
        raise ConfigError("graph_opt", s.graph_opt, ", ".join(GRAPH_OPT_LEVELS))
    if s.fuse_skip_layernorm not in FUSE_SKIP_LAYERNORM:
        raise ConfigError("fuse_skip_layernorm", s.fuse_skip_layernorm, ", ".join(FUSE_SKIP_LAYERNORM))
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[s.graph_opt]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if s.threads:
        so.intra_op_num_threads = s.threads
    # spinning threads burn the cores other work needs; on a shared CPU that costs more than it saves
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if s.spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if s.spinning else "0")
    so.log_severity_level = 3
    if s.profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = f"{s.profile_prefix}_{path.stem}"
    providers: list[Any]
    if s.provider == "CPUExecutionProvider":
        providers = ["CPUExecutionProvider"]
    elif s.provider == "CUDAExecutionProvider":
        providers = [("CUDAExecutionProvider", {"device_id": s.device_id}), "CPUExecutionProvider"]
    elif s.provider == "TensorrtExecutionProvider":
        providers = [
            ("TensorrtExecutionProvider", {"device_id": s.device_id, "trt_fp16_enable": s.fp16,
                                           "trt_engine_cache_enable": True,
                                           "trt_engine_cache_path": str(path.parent / "trt_cache")}),
            ("CUDAExecutionProvider", {"device_id": s.device_id}), "CPUExecutionProvider",
        ]
    else:
        raise ConfigError("provider", s.provider,
                          "CPUExecutionProvider, CUDAExecutionProvider, TensorrtExecutionProvider")
    if s.provider not in ort.get_available_providers():
        raise ProviderFallbackError(
            f"{s.provider} is not available in this onnxruntime build (available: "
            f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu (the 'gpu' extra) instead of "
            "onnxruntime, or use --device cpu"
        )
    fuse = s.fuse_skip_layernorm == "all" or (step and s.fuse_skip_layernorm == "decoder")
    disabled = ["SkipLayerNormFusion"] if s.provider == "CPUExecutionProvider" and not fuse else []
    sess = ort.InferenceSession(model if model is not None else str(path), sess_options=so, providers=providers,
                                disabled_optimizers=disabled)
    check_providers(sess, s.provider)
    return sess


class OrtModel:
    """The sessions of one artefact and the greedy loop over them."""

    def __init__(self, art: Path, settings: SessionSettings) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.dir = art
        self.meta: dict[str, Any] = json.loads((art / META).read_text())
        self.settings = settings
        self.seq2seq = self.meta["architecture"] == "seq2seq"
        self.layers = int(self.meta["num_layers"])
        self.kv_heads = int(self.meta["kv_heads"])
        self.head_dim = int(self.meta["head_dim"])
        self.encoder = make_session(art / ENCODER, settings) if self.seq2seq else None
        self.encoder_outputs = [o.name for o in self.encoder.get_outputs()] if self.encoder is not None else []
        # the encoder's run() without InferenceSession.run's per-call feed checks, as the decoder's below
        self._encoder_run: Any = getattr(self.encoder, "_sess", self.encoder).run if self.encoder is not None else None
        head = self.meta.get("greedy_head")
        dec = art / DECODER
        # a bounded head (int4-lossless) chooses without the fp32 logits: on the CPU the decoding session
        # keeps the head and drops the logits' nodes; a run that asks for logits gets them from a
        # session over the whole graph, built when first asked (validation, or banned ids the head
        # does not mask)
        self.logits_dropped = (settings.bounded_head and bool(head and head.get("bounded"))
                               and not (settings.on_gpu or settings.io_binding))
        if self.logits_dropped:
            graph: bytes | None = _edited(dec, drop_logits)
        elif head and not settings.greedy_in_graph:
            graph = _edited(dec, strip_greedy_head)
        else:
            graph = None
        self.decoder = make_session(dec, settings, graph, step=True)
        self._whole: Any = None
        types = {i.name: i.type for i in self.decoder.get_inputs()}
        self.past_dtype = _ORT_TYPES[types[PAST + "k.0"]]
        self.bias_dtype = _ORT_TYPES[types.get("self_bias", "tensor(float)")]
        outs = [o.name for o in self.decoder.get_outputs()]
        self.present_names = [n for n in outs if n.startswith(PRESENT)]
        self.past_names = [PAST + n.removeprefix(PRESENT) for n in self.present_names]
        # the greedy choice inside the graph (the head's output NEXT_IDS): banned/EOS ids it masks
        self.head = NEXT_IDS in outs and head is not None
        self.head_banned: list[int] = list(head["banned"]) if head else []
        self.head_eos: list[int] = list(head["eos"]) if head else []
        self.dev = "cuda" if settings.on_gpu else "cpu"
        self.io_binding = settings.io_binding or settings.on_gpu
        # the decoder's run() without InferenceSession.run's per-call checks of the feed's names and
        # OrtValues (a few microseconds a step, a few percent of a small int8 model's step): the feed is
        # built here, from the names the session reported
        self._logits_out = [LOGITS, *self.present_names]
        self._decoder_run = getattr(self.decoder, "_sess", self.decoder).run
        # the greedy loop (the artefact's graph with its head, whether or not the step session keeps it)
        self.loop = self._loop_session(dec) if settings.greedy_loop and head else None
        self.loop_outputs = [o.name for o in self.loop.get_outputs()] if self.loop is not None else []

    def _loop_session(self, dec: Path) -> Any:
        """A session over the decoder wrapped in the greedy loop, or None where it does not apply (a
        decoder-only model, no greedy head in the graph, a GPU provider, weights in external files)."""
        if not self.seq2seq or self.io_binding:
            return None
        import onnx

        from testbed.engines.onnxruntime.loop import has_external_data, loop_model

        step = onnx.load(str(dec), load_external_data=False)
        if has_external_data(step):
            return None
        return make_session(dec.with_name("decoder_loop.onnx"), self.settings, loop_model(step).SerializeToString(),
                            step=True)

    def head_fits(self, banned: Sequence[int], eos: Sequence[int]) -> bool:
        """Does the graph's greedy head mask exactly these banned and EOS ids (else: choose from logits)?"""
        return self.head and self._masks_exactly(banned, eos)

    def loop_fits(self, banned: Sequence[int], eos: Sequence[int]) -> bool:
        """Can the greedy loop decode for these banned and EOS ids (its head masks exactly those)?"""
        return self.loop is not None and self._masks_exactly(banned, eos)

    def _masks_exactly(self, banned: Sequence[int], eos: Sequence[int]) -> bool:
        return sorted(set(banned)) == self.head_banned and sorted(set(eos)) == self.head_eos

    # ------------------------------------------------------------------ helpers
    def _ov(self, arr: np.ndarray) -> Any:
        return self._ort.OrtValue.ortvalue_from_numpy(arr, self.dev, self.settings.device_id)

    def _empty_past(self, batch: int) -> list[Any]:
        z = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.past_dtype)
        return [self._ov(z) if self.io_binding else z for _ in self.past_names]

    def _step(
        self, fixed: dict[str, Any], inputs: dict[str, np.ndarray], past: Sequence[Any], *, logits: bool = False
    ) -> tuple[np.ndarray | None, np.ndarray | None, list[Any]]:
        """One decoder run: (next ids, logits, presents).

        The ids come from the graph's head when ``inputs`` carries ``no_eos`` (else None); the logits
        only when asked for, or when the graph has no head (else None): a step that wants ids
        never copies the (B, V) scores out.
        """
        if logits and not (self.io_binding or self.head):  # the CPU default: logits and presents, nothing else
            feed = {**fixed, **inputs}
            feed.update(zip(self.past_names, past))
            outs = self._decoder_run(self._logits_out, feed, None)
            return None, outs[0], outs[1:]
        ids = NO_EOS in inputs
        if self.head and not ids:  # the head's input is required even when its output is not used
            inputs = {**inputs, NO_EOS: np.zeros(len(next(iter(inputs.values()))), dtype=bool)}
        want = ([NEXT_IDS] if ids else []) + ([LOGITS] if logits or not ids else [])
        if not self.io_binding:
            feed = {**fixed, **inputs, **dict(zip(self.past_names, past))}
            run = self._whole_run() if self.logits_dropped and LOGITS in want else self._decoder_run
            outs = run([*want, *self.present_names], feed, None)
        else:
            io = self.decoder.io_binding()
            for name, ov in fixed.items():
                io.bind_ortvalue_input(name, ov)
            for name, arr in inputs.items():
                io.bind_ortvalue_input(name, self._ov(arr))
            for name, ov in zip(self.past_names, past):
                io.bind_ortvalue_input(name, ov)
            for name in want:
                io.bind_output(name, "cpu")
            for name in self.present_names:
                io.bind_output(name, self.dev, self.settings.device_id)
            self.decoder.run_with_iobinding(io)
            got = io.get_outputs()
            outs = [o.numpy() for o in got[: len(want)]] + list(got[len(want):])
        k = len(want)
        return (outs[0] if ids else None), (outs[k - 1] if LOGITS in want else None), list(outs[k:])

    def lean_fits(self) -> bool:
        """Can :meth:`decode_one` decode here: a seq2seq artefact on the plain CPU path (numpy feeds, the
        logits out, no greedy head or loop in the session)?"""
        return (self.seq2seq and not (self.io_binding or self.head or self.logits_dropped)
                and self.loop is None)

    def decode_one(self, ids: Sequence[int], max_new: int, prefix: Sequence[int], banned: Sequence[int],
                   eos: Collection[int]) -> Generator[int | str, None, None]:
        """One source sentence decoded greedily, where :meth:`lean_fits` (``Engine.generate`` of one request,
        and a stream of one): yields ``ENCODER_DONE_MARK`` once the encoder has run, then each token id as
        it is chosen -- after the forced ``prefix`` (the decoder start token, then any forced language
        token) -- until an ``eos`` id (yielded) or ``max_new`` tokens.  The same runs, feeds and choice as
        the batch's steps on one row (its tokens are the batch's); one feed dictionary kept across the
        steps, the rest of the batch's bookkeeping (admission, the prefill, the padding count, eviction)
        skipped (measured by ``bench/single_request.py``)."""
        assert self.encoder is not None
        src = np.asarray([ids], dtype=np.int64)
        feed = dict(zip(self.encoder_outputs,
                        self._encoder_run(self.encoder_outputs, {"input_ids": src, "attention_mask": np.ones_like(src)},
                                          None)))
        yield ENCODER_DONE_MARK
        feed.update(zip(self.past_names, self._empty_past(1)))
        run, outs, names = self._decoder_run, self._logits_out, self.past_names
        idx: Any = banned[0] if len(banned) == 1 else list(banned)
        forced = list(prefix)
        tid = forced[0]
        for t in range(len(forced) + max_new - 1):
            feed["input_ids"] = np.array([[forced[t] if t < len(forced) else tid]], dtype=np.int64)
            feed["position_ids"] = np.array([[t]], dtype=np.int64)
            feed["self_bias"] = np.zeros((1, 1, 1, t + 1), dtype=self.bias_dtype)
            got = run(outs, feed, None)
            feed.update(zip(names, got[1:]))
            if t + 1 < len(forced):
                continue
            logits = got[0]
            if banned:
                logits[0, idx] = -np.inf
            tid = int(logits.argmax())
            yield tid
            if tid in eos:
                return

    def _whole_run(self) -> Any:
        """run() of a session over the whole decoder graph, logits included (built when first needed)."""
        if self._whole is None:
            self._whole = make_session(self.dir / DECODER, self.settings, step=True)
        return getattr(self._whole, "_sess", self._whole).run

    def _encode(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        assert self.encoder is not None
        names = self.encoder_outputs
        if not self.io_binding:
            return dict(zip(names, self._encoder_run(names, {"input_ids": ids, "attention_mask": mask}, None)))
        io = self.encoder.io_binding()
        io.bind_ortvalue_input("input_ids", self._ov(ids))
        io.bind_ortvalue_input("attention_mask", self._ov(mask))
        for name in names:
            io.bind_output(name, self.dev, self.settings.device_id)
        self.encoder.run_with_iobinding(io)
        return dict(zip(names, io.get_outputs()))

    # ------------------------------------------------------------------ decoding
    def greedy(
        self, ids: np.ndarray, mask: np.ndarray, max_new: int, banned: Sequence[int] = (),
        return_logits: bool = False,
    ) -> Generator[Any, None, None]:
        """Yield ``ENCODER_DONE_MARK`` (seq2seq), then per step the chosen ids (B,) as a numpy array.

        ``ids``/``mask`` are padded (B, S) int64 arrays: right padding for an encoder, left padding
        for a decoder-only model.  Every row steps in lockstep; the caller decides when to stop.
        With ``return_logits`` each step yields ``(ids, logits)`` instead.  The graph's head
        chooses when it masks exactly ``banned`` (EOS is never masked here).
        """
        b = ids.shape[0]
        banned = list(banned)
        head = {NO_EOS: np.zeros(b, dtype=bool)} if self.head and sorted(set(banned)) == self.head_banned else {}

        def choose(nxt: np.ndarray | None, logits: np.ndarray | None) -> np.ndarray:
            if nxt is not None:
                return nxt
            assert logits is not None
            if banned:
                logits[:, banned] = -np.inf
            return logits.argmax(-1)

        if self.seq2seq:
            assert self.encoder is not None
            fixed = self._encode(ids, mask)
            yield ENCODER_DONE_MARK
            inp = np.full((b, 1), int(self.meta["decoder_start_token_id"]), dtype=np.int64)
            past = self._empty_past(b)
            pos = np.zeros((b, 1), dtype=np.int64)
            for t in range(max_new):
                bias = np.zeros((b, 1, 1, t + 1), dtype=self.bias_dtype)
                nxt, logits, past = self._step(
                    fixed, {"input_ids": inp, "position_ids": pos, "self_bias": bias, **head}, past,
                    logits=return_logits)
                pos = pos + 1
                nxt = choose(nxt, logits)
                yield (nxt, logits) if return_logits else nxt
                inp = nxt.astype(np.int64).reshape(b, 1)
            return
        am = mask.astype(np.int64)
        pos = np.clip(np.cumsum(am, axis=1) - 1, 0, None).astype(np.int64)
        inp = ids.astype(np.int64)
        past = self._empty_past(b)
        one = np.ones((b, 1), dtype=np.int64)
        for _ in range(max_new):
            nxt, logits, past = self._step(
                {}, {"input_ids": inp, "attention_mask": am, "position_ids": pos, **head}, past, logits=return_logits)
            nxt = choose(nxt, logits)
            yield (nxt, logits) if return_logits else nxt
            inp = nxt.astype(np.int64).reshape(b, 1)
            am = np.concatenate([am, one], axis=1)
            pos = pos[:, -1:] + 1


def strip_greedy_head(model: Any) -> Any:
    """The decoder graph without the greedy head (``model``, an ``onnx.ModelProto``, changed in place
    and returned): the graph as it was before :func:`testbed.export.greedy_head.add_greedy_head`."""
    g = model.graph
    keep = [n for n in g.node if not n.name.startswith(HEAD_PREFIX)]
    del g.node[:]
    g.node.extend(keep)
    inits = [i for i in g.initializer if not i.name.startswith(HEAD_PREFIX)]
    del g.initializer[:]
    g.initializer.extend(inits)
    for field, name in ((g.input, NO_EOS), (g.output, NEXT_IDS)):
        for i, v in enumerate(field):
            if v.name == name:
                del field[i]
                break
    return model


def drop_logits(model: Any) -> Any:
    """The decoder graph without its ``logits`` output and the nodes only it needed (``model``, an
    ``onnx.ModelProto``, changed in place and returned).  ONNX Runtime runs every node whose output
    the graph returns, asked for or not: a step that chooses with a bounded head
    (:mod:`testbed.export.lossless`) would otherwise compute every logit in fp32 as well."""
    g = model.graph
    for i, v in enumerate(g.output):
        if v.name == LOGITS:
            del g.output[i]
            break
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(g.node):  # graph order is topological: a node's readers come after it
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
            for a in node.attribute:  # subgraphs (If) read outer names
                for sub in [a.g, *a.graphs]:
                    needed.update(i for n in sub.node for i in n.input)
    del g.node[:]
    g.node.extend(reversed(keep))
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    return model


def _edited(path: Path, edit: Any) -> bytes:
    """The graph file ``path`` after ``edit`` (:func:`drop_logits`, :func:`strip_greedy_head`), serialized
    for a session."""
    import onnx

    return bytes(edit(onnx.load(str(path))).SerializeToString())


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[np.ndarray, np.ndarray]:
    """(B, S) int64 ids and mask; right padding for an encoder, left for a decoder-only model."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, cols] = s
        mask[i, cols] = 1
    return ids, mask
