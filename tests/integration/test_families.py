"""Every supported family on every engine, offline: tiny checkpoints built in a session fixture.

The checkpoints (tests/tiny_checkpoints.py: random weights, seeded; tokenizers trained here on the
committed test set) are compared token for token at fp32: CTranslate2 and ONNX Runtime against the
torch engine, stream against batch on each engine.  What an engine cannot run is refused with a
reason, and each refusal has a test.  Families whose random weights decode one token over and
over are listed in NEAR_CONSTANT: their equality is real but weak (see the README's matrix).
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import tiny_checkpoints as T

from testbed.config import EngineConfig
from testbed.engines.base import GenerationRequest
from testbed.engines.registry import create_engine
from testbed.errors import ConfigError, InputError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ctranslate2") is None or importlib.util.find_spec("onnxruntime")
                       is None, reason="pip install 'testbed[cpu]'"),
]

LANGS = {"mbart": ("en_XX", "de_DE"), "m2m100": ("en", "de"), "nllb": ("eng_Latn", "deu_Latn")}
TEXTS = ("Click OK to close the dialog.", "Select the range of cells that you want to sort.", "Yes.",
         "The selected text is copied to the clipboard, and the dialog closes when you press the button.")
NEW = 16
ONNX_FAMILIES = T.FAMILIES  # every family has ONNX graphs (testbed.export.wrappers, testbed.export.seq2seq_graphs)
# families whose tiny random weights repeat one token on the texts above (checked by a test below)
NEAR_CONSTANT = {"bart", "blenderbot-small"}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-families")
    return lambda family: T.build(family, root)


def engine(tiny, family, name="torch", new=NEW):
    src, tgt = LANGS.get(family, (None, None))
    return create_engine(EngineConfig(model=str(tiny(family)), engine=name, threads=1, max_new_tokens=new,
                                      src_lang=src, tgt_lang=tgt))


_TORCH: dict[str, list[list[int]]] = {}
_SAFE: dict[str, list[int]] = {}
# random weights sit on near-ties: a step whose top-2 logits are closer than this may be decided
# differently by another CPU's kernels (AVX2 vs AVX-512), so tokens are compared up to it only
NEAR_TIE = 1e-3


def _safe_len(eng, text) -> int:
    """Tokens of the torch stream of ``text`` chosen with a top-2 logit gap of at least NEAR_TIE."""
    gaps: list[float] = []
    real = eng._pick

    def pick(logits, no_eos=None):
        out = real(logits, no_eos)  # masks banned / EOS in place first
        top = logits.float().topk(2, dim=-1).values
        gaps.append(float(top[0, 0] - top[0, 1]))
        return out

    eng._pick = pick
    try:
        n = len(eng.stream(text).run().token_ids)
    finally:
        del eng._pick
    return next((k for k, g in enumerate(gaps[:n]) if g < NEAR_TIE), n)


def torch_ids(tiny, family):
    if family not in _TORCH:
        eng = engine(tiny, family)
        _TORCH[family] = [g.token_ids for g in eng.generate(list(TEXTS))]
        _SAFE[family] = [_safe_len(eng, t) for t in TEXTS]
        eng.close()
    return _TORCH[family]


def same(got, family, tiny, ref=None):
    """``got`` equals ``ref`` (default: torch's greedy tokens), each text up to torch's first near-tie
    (all of it without one)."""
    ref = torch_ids(tiny, family) if ref is None else ref
    return all(g == r if k == len(r) else g[:k] == r[:k] for g, r, k in zip(got, ref, _SAFE[family]))


def check_engine(tiny, family, name):
    eng = engine(tiny, family, name)
    try:
        batch = [g.token_ids for g in eng.generate(list(TEXTS))]
        stream = [eng.stream(t).run().token_ids for t in TEXTS]
    finally:
        eng.close()
    assert same(batch, family, tiny), f"{family} on {name}: greedy tokens differ from torch fp32"
    assert same(stream, family, tiny, ref=batch), f"{family} on {name}: stream differs from batch"


@pytest.mark.parametrize("family", T.FAMILIES)
def test_torch_stream_equals_batch(tiny, family):
    eng = engine(tiny, family)
    stream = [eng.stream(t).run().token_ids for t in TEXTS]
    assert same(stream, family, tiny) and all(len(s) >= 1 for s in stream)


@pytest.mark.parametrize("family", T.FAMILIES)
def test_ctranslate2_fp32_equals_torch(tiny, family):
    check_engine(tiny, family, "ctranslate2")


@pytest.mark.parametrize("family", ONNX_FAMILIES)
def test_onnxruntime_fp32_equals_torch(tiny, family):
    check_engine(tiny, family, "onnxruntime")


@pytest.mark.parametrize("family", T.SEQ2SEQ)
def test_onnxruntime_single_request_decodes_as_a_batch_of_one(tiny, family):
    """generate() of one seq2seq request, and a stream of one, run OrtModel.decode_one (the steps without
    the batch's bookkeeping): the batch path's tokens for a batch of one, forced language prefixes, banned
    ids and the max_new_tokens stop included (the same feeds to the same sessions: exact equality)."""
    from testbed.engines.base import Engine

    eng = engine(tiny, family, "onnxruntime")
    try:
        eng.load()
        assert eng.ort.lean_fits()
        calls = []
        real = eng.ort.decode_one
        eng.ort.decode_one = lambda *a: calls.append(1) or real(*a)
        for text in TEXTS:
            for new in (1, 3, NEW):
                p = eng.prepare(GenerationRequest(text=text, max_new_tokens=new))
                batch = Engine._generate_batch(eng, [p])[0]
                assert eng.generate([p.request])[0].token_ids == batch, (text, new)
                s = eng.stream(p.request).run()
                assert s.token_ids == batch, (text, new)
                assert s.encoder_done_ns is not None and s.encoder_done_ns <= s.events[0].t_ns
                assert s.finish_reason == ("eos" if batch[-1] in eng.eos_token_ids else "length")
        assert len(calls) == 2 * 3 * len(TEXTS)
        eng.generate(list(TEXTS[:2]))  # two requests: the batch
        assert len(calls) == 2 * 3 * len(TEXTS)

        def tokens(banned):
            ids = eng.prepare(GenerationRequest(text=TEXTS[0])).input_ids
            return [t for t in real(ids, 1, eng.prefix, banned, eng.eos_token_ids) if not isinstance(t, str)]

        first = tokens([])
        assert len(first) == 1 and tokens(first) != first  # banned ids are never chosen
    finally:
        eng.close()


def test_onnx_exporter_has_graphs_for_every_family_and_refuses_other_model_types(tmp_path):
    """The exporter's table is the families' table; a model_type outside it is refused naming it."""
    from testbed.export.onnx_export import GRAPHS, model_type
    from testbed.spec import FAMILIES

    assert set(GRAPHS) == set(FAMILIES)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError) as e:
        model_type(tmp_path)
    assert "model_type bert" in str(e.value) and "t5 (seq2seq" in str(e.value) and "gpt2 (causal" in str(e.value)


@pytest.mark.parametrize("precision", ["int8", "int8-static"])
@pytest.mark.parametrize("family", T.SEQ2SEQ)
def test_onnxruntime_int8_builds_and_generates(tiny, family, precision):
    """int8 graphs of every seq2seq family build (quantized MatMuls in both graphs) and decode.  Their
    tokens are not compared with fp32: int8 kernels differ between CPUs (AVX2, AVX-512 VNNI)."""
    src, tgt = LANGS.get(family, (None, None))
    eng = create_engine(EngineConfig(model=str(tiny(family)), engine="onnxruntime", precision=precision,
                                     threads=1, max_new_tokens=NEW, src_lang=src, tgt_lang=tgt))
    try:
        outs = eng.generate(list(TEXTS[:2]))
        manifest = json.loads((eng.artifact / "manifest.json").read_text())
    finally:
        eng.close()
    assert all(1 <= len(g.token_ids) <= NEW for g in outs)
    counts = json.dumps(manifest)
    assert ("MatMulInteger" in counts or "DynamicQuantizeMatMul" in counts) if precision == "int8" \
        else "QuantizeLinear" in counts, counts[:400]


def test_near_constant_families_are_the_ones_listed(tiny):
    """The README says which families' tiny outputs are degenerate; this keeps it from hiding one.

    Only inclusion is asserted: random-weight models sit on near-ties, so whether a listed family
    repeats one token depends on the CPU's kernels and the thread count (seen in one process: the
    same checkpoint gave 2 distinct tokens after other tests had set torch to 1 thread, 3 before)."""
    constant = {f for f in T.FAMILIES if all(len(set(ids)) <= 2 for ids in torch_ids(tiny, f))}
    assert constant <= NEAR_CONSTANT


def test_forced_target_language_changes_the_output_and_is_not_a_token(tiny):
    de = engine(tiny, "nllb")
    fr = create_engine(EngineConfig(model=str(tiny("nllb")), threads=1, max_new_tokens=NEW, src_lang="eng_Latn",
                                    tgt_lang="fra_Latn"))
    a, b = de.generate([TEXTS[0]])[0].token_ids, fr.generate([TEXTS[0]])[0].token_ids
    assert a != b and de.spec is not None and de.spec.forced_bos_token_id not in a[:1]
    assert de.spec.decoder_prefix == (2, de.tokenizer.convert_tokens_to_ids("deu_Latn"))


@pytest.mark.parametrize("family", ["nllb", "mbart", "m2m100"])
def test_multilingual_families_need_a_known_target_language(tiny, family):
    with pytest.raises(ConfigError) as e:
        create_engine(EngineConfig(model=str(tiny(family)), max_new_tokens=4))
    assert e.value.field == "tgt_lang" and "--tgt-lang" in str(e.value)
    with pytest.raises(ConfigError) as e:
        create_engine(EngineConfig(model=str(tiny(family)), max_new_tokens=4, tgt_lang="xx_Nope"))
    assert e.value.field == "tgt_lang" and "not a language code" in str(e.value) and "_" in str(e.value)


def test_families_without_languages_refuse_them(tiny):
    with pytest.raises(ConfigError) as e:
        create_engine(EngineConfig(model=str(tiny("marian")), tgt_lang="de"))
    assert e.value.field == "tgt_lang" and "no language options" in str(e.value)


def test_unknown_family_is_refused_naming_the_supported_ones(tiny, tmp_path):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "is_encoder_decoder": False}))
    for name in ("torch", "ctranslate2", "onnxruntime"):
        with pytest.raises(ConfigError) as e:
            create_engine(EngineConfig(model=str(d), engine=name))
        assert "model_type bert" in str(e.value) and "blenderbot-small" in str(e.value) and "nllb" in str(e.value)


def test_gpt2_long_prompt_is_truncated_to_its_positions_on_every_engine(tiny):
    """GPT-2's limit is n_positions (64 here): CTranslate2 crashed past it ('No position encodings')."""
    long = " ".join(["the selected text is copied"] * 40)
    outs = {}
    for name in ("torch", "ctranslate2", "onnxruntime"):
        eng = engine(tiny, "gpt2", name)
        g = eng.generate([long])[0]
        assert g.n_in + NEW <= 64 and any("truncated" in w for w in g.warnings), (name, g.n_in, g.warnings)
        outs[name] = g.token_ids
    assert outs["ctranslate2"] == outs["torch"] == outs["onnxruntime"]


def test_seq2seq_new_tokens_are_capped_by_the_position_table(tiny):
    eng = engine(tiny, "blenderbot", new=100)  # 48 positions, decoder start included
    g = eng.generate([GenerationRequest(text=TEXTS[0], ignore_eos=True)])[0]
    assert len(g.token_ids) == 47 and any("capped to 47" in w for w in g.warnings)


def test_chat_without_template(tiny):
    bb = engine(tiny, "blenderbot")
    msgs = ({"role": "user", "content": "Hello there."}, {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "How are you?"})
    assert bb.encode_input(GenerationRequest(messages=msgs)) == bb.tokenizer("Hello there.  Hi!  How are you?")[
        "input_ids"]
    gpt2 = engine(tiny, "gpt2")
    with pytest.raises(InputError, match="no chat template"):
        gpt2.encode_input(GenerationRequest(messages=msgs))
    assert gpt2.encode_input(GenerationRequest(text="Hello there.")) == gpt2.tokenizer("Hello there.")["input_ids"]


def test_server_serves_a_seq2seq_dialogue_family(tiny):
    from starlette.testclient import TestClient

    from testbed.serve.app import create_app

    eng = engine(tiny, "blenderbot", "ctranslate2")
    msgs = [{"role": "user", "content": "Hello there."}]
    expected = eng.stream(GenerationRequest(messages=tuple(msgs))).run().token_ids
    with TestClient(create_app(eng, model_name="tiny-blenderbot"), base_url="http://127.0.0.1") as c:
        r = c.post("/v1/chat/completions", json={"model": "tiny-blenderbot", "messages": msgs, "max_tokens": NEW})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["completion_tokens"] == len(expected)
        assert body["choices"][0]["message"]["content"] == eng.decode(expected)


def test_sweep_runs_a_tiny_family(tiny, tmp_path):
    from testbed.eval.runner import run_sweep
    from testbed.eval.sweep import parse_sweep

    data = tmp_path / "prompts.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    sweep = parse_sweep({
        "model": str(tiny("qwen2")), "dataset": str(data), "max_new_tokens": 8,
        "offline": {"num_examples": 4}, "singlestream": {"num_requests": 2, "warmup": 1},
        "accuracy": {"gate_reference": "fp32", "gate_metric": "chrf", "divergence_examples": 2},
        "defaults": {"threads": 1, "batch": 2},
        "configs": [{"engine": ["ctranslate2", "onnxruntime"], "precision": "fp32"}],
    }, "tiny-sweep")
    rows = run_sweep(sweep, tmp_path / "run", progress=False, render=False)
    assert [r["status"] for r in rows] == ["ok"] * 3, [r.get("error") for r in rows]
    assert all(r["accuracy"]["exact_match_vs_fp32"] == 1.0 for r in rows), [r["accuracy"] for r in rows]


@pytest.mark.parametrize("family", ["nllb", "mbart", "t5", "qwen2"])
def test_ctranslate2_streamed_batch_equals_streams_with_target_prefixes(tiny, family):
    """CTranslate2's one-call batch (CT2Batch) with a forced target-language prefix: the prefix steps
    are not tokens, and every row gets the tokens it gets alone."""
    from testbed.engines.base import GenerationRequest

    eng = engine(tiny, family, "ctranslate2")
    try:
        prepared = [eng.prepare(GenerationRequest(text=t)) for t in TEXTS]
        bs = eng.stream_batch(prepared)
        for _ in bs:
            pass
        assert type(bs.batch).__name__ == "CT2Batch"
        assert [r.token_ids for r in bs.rows] == [eng.stream(t).run().token_ids for t in TEXTS]
    finally:
        eng.close()


def _rows_joining_decode_as_alone_or_are_refused(tiny, family, name) -> str:
    """"joined" (and every row got its single-stream tokens) or "refused" (with the reason)."""
    from testbed.engines.base import GenerationRequest
    from testbed.engines.stream import Stream

    eng = engine(tiny, family, name)
    try:
        reqs = [GenerationRequest(text=t) for t in TEXTS]
        singles = [eng.stream(r).run().token_ids for r in reqs]
        prepared = [eng.prepare(r) for r in reqs]
        bs = eng.stream_batch(prepared[:1])
        if not bs.batch.join_running:
            assert "cannot join" in bs.batch.join_refusal or "positions" in bs.batch.join_refusal
            bs.close()
            return "refused"
        rows = [0]
        for k, p in enumerate(prepared[1:], start=1):
            for _ in range(k):  # join after k more steps
                bs.advance()
            rows += bs.add([Stream(eng, p.request, eng.clock, prepared=p)])
        while bs.live:
            bs.advance()
        assert [bs.rows[r].token_ids for r in rows] == singles
    finally:
        eng.close()
    return "joined"


@pytest.mark.parametrize("family", list(T.FAMILIES))
def test_torch_rows_joining_a_running_batch_decode_as_alone_or_are_refused(tiny, family):
    """Continuous batching on every family: rows that join at later steps get their single-stream
    tokens (per-row positions), or the engine says it cannot join rows for that family."""
    _rows_joining_decode_as_alone_or_are_refused(tiny, family, "torch")


@pytest.mark.parametrize("family", T.SEQ2SEQ)
def test_onnxruntime_rows_joining_a_running_batch_decode_as_alone(tiny, family):
    """The seq2seq graphs take each row's position and a per-row self-attention mask, so rows join a
    running batch on every family (T5's relative bias and M2M100's sinusoidal positions included)."""
    assert _rows_joining_decode_as_alone_or_are_refused(tiny, family, "onnxruntime") == "joined"


def test_sweep_takes_the_language_options_of_a_multilingual_family(tiny, tmp_path):
    """A sweep's src_lang / tgt_lang reach every row's engine; without tgt_lang an NLLB sweep is refused
    when it is read, naming the field."""
    from testbed.eval.runner import run_sweep
    from testbed.eval.sweep import SweepError, parse_sweep

    data = tmp_path / "prompts.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    doc = {
        "model": str(tiny("nllb")), "dataset": str(data), "max_new_tokens": 8,
        "offline": {"num_examples": 2}, "singlestream": {"num_requests": 1, "warmup": 0},
        "accuracy": {"gate_reference": "fp32", "gate_metric": "chrf", "divergence_examples": 1},
        "defaults": {"threads": 1, "batch": 2}, "configs": [{"engine": "onnxruntime", "precision": "fp32"}],
    }
    with pytest.raises(SweepError, match="tgt_lang.*--tgt-lang"):
        parse_sweep(doc, "nllb-sweep")
    sweep = parse_sweep({**doc, "src_lang": "eng_Latn", "tgt_lang": "deu_Latn"}, "nllb-sweep")
    rows = run_sweep(sweep, tmp_path / "run", progress=False, render=False)
    assert [r["status"] for r in rows] == ["ok"] * 2, [r.get("error") for r in rows]


def test_onnx_t5_with_a_tied_head_and_relu_matches_torch(tiny, tmp_path):
    """Original T5 (t5-small): tied head, so the decoder output is rescaled by d_model ** -0.5, and a
    ReLU feed-forward; the tiny T5 above is the flan-t5 shape (untied, gated-GELU).  The fp32 export
    fails unless ONNX Runtime's greedy tokens equal torch's and first-step logits are within 1e-3."""
    import shutil

    import torch
    import transformers as tf

    from testbed.export.onnx_export import ensure_onnx

    src = tiny("t5")
    out = tmp_path / "t5-tied"
    cfg = tf.T5Config.from_pretrained(src)
    keep = {k: v for k, v in cfg.to_dict().items() if k not in (
        "scale_decoder_outputs", "tie_word_embeddings", "is_gated_act", "dense_act_fn")}
    cfg = tf.T5Config(**{**keep, "feed_forward_proj": "relu"})  # tie_word_embeddings unset: original T5
    assert cfg.scale_decoder_outputs and not cfg.is_gated_act
    torch.manual_seed(T.SEED)
    tf.T5ForConditionalGeneration(cfg).eval().save_pretrained(out)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "spiece", "generation")):
            shutil.copy2(f, out / f.name)
    art = ensure_onnx(str(out), "fp32", root=tmp_path / "artefacts", log=lambda _: None)
    report = json.loads((art / "manifest.json").read_text())
    assert "identical_greedy_outputs" in json.dumps(report), report
