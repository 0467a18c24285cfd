"""int4-lossless end to end on a tiny Llama whose weights went through GGUF's Q4_1 / Q8_0 blocks
(tests/tiny_checkpoints.build_gguf_like: what the embedded chat model's checkpoint is): the artefact
packs every projection and the head, passes the exporter's strict fp32 validation, and decodes the
fp32 engine's tokens; a checkpoint without such blocks is refused with the reason."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import tiny_checkpoints as T
from near_ties import greedy_with_gaps, same_up_to_near_tie

from testbed.config import EngineConfig
from testbed.engines.registry import create_engine
from testbed.errors import ConfigError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="pip install 'testbed[cpu]'"),
]

PROMPTS = ("Click OK to close the dialog.", "Select the range of cells that you want to sort.", "Yes.")
NEW = 16
# int4-lossless adds in another order than fp32 (block terms; another kernel at one row than at
# several): a step whose fp32 top-2 logits are closer than this may be decided either way
NEAR_TIE = 1e-3


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("int4-lossless")


def _engine(model, name, precision):
    return create_engine(EngineConfig(model=str(model), engine=name, precision=precision, threads=1,
                                      max_new_tokens=NEW))


def _fp32_steps(art, prompt):
    """The fp32 graph's greedy tokens for ``prompt`` (batch 1) and each step's top-1 / top-2 logit gap."""
    from transformers import AutoTokenizer

    from testbed.engines.onnxruntime.runner import OrtModel, SessionSettings
    from testbed.export.validation import prompt_ids

    m = OrtModel(art, SessionSettings(threads=1))
    ids = np.array([prompt_ids(AutoTokenizer.from_pretrained(art), prompt, "causal")], dtype=np.int64)
    return greedy_with_gaps(m, ids, NEW, m.meta["banned"], m.meta["eos_token_ids"])


def _same(got, want, gaps):
    """``got`` equals the fp32 tokens up to the first near-tie (all of them without one)."""
    return same_up_to_near_tie(got, want, gaps, NEAR_TIE)


def test_int4_lossless_decodes_the_fp32_tokens(root):
    model = T.build_gguf_like(root)
    ref = _engine(model, "onnxruntime", "fp32")
    eng = _engine(model, "onnxruntime", "int4-lossless")
    try:
        steps = [_fp32_steps(ref.artifact, p) for p in PROMPTS]
        got = [g.token_ids for g in eng.generate(list(PROMPTS))]
        stream = [eng.stream(p).run().token_ids for p in PROMPTS]
        manifest = json.loads((eng.artifact / "manifest.json").read_text())
    finally:
        ref.close()
        eng.close()
    # 2 layers x 5 weight MatMuls on Q4_1 blocks (the graph computes q/k/v in one), the tied head on
    # Q8_0; gate/up share a call; the embedding gathered from its Q8_0 bytes
    assert manifest["packed"]["decoder.onnx"] == {"q4": 10, "q8": 1, "float": 0, "nbits_nodes": 9, "gather_q8": 1,
                                                  "bounded_head": 1}
    # the nine, and the bounded head's approximate pass over the head's blocks
    assert manifest["quantized_matmuls"]["decoder.onnx"]["MatMulNBits"] == 10
    # the exporter's strict check (fp32's: the same greedy tokens as torch, logits within 1e-3) passed
    assert manifest["validation"]["identical_greedy_outputs"] == manifest["validation"]["sentences"]
    assert all(len(t) >= 2 for t, _ in steps)
    for batch_ids, stream_ids, (want, gaps) in zip(got, stream, steps):
        assert _same(batch_ids, want, gaps), (batch_ids, want)
        assert _same(stream_ids, want, gaps), (stream_ids, want)


def test_int4_lossless_refuses_weights_without_blocks(root):
    with pytest.raises(ConfigError, match=r"int4-lossless.*GGUF Q4_1 / Q8_0 blocks.*No weight MatMul"):
        _engine(T.build("llama", root), "onnxruntime", "int4-lossless")


def _lossless_art(root):
    eng = _engine(T.build_gguf_like(root), "onnxruntime", "int4-lossless")
    try:
        return eng.artifact
    finally:
        eng.close()


def _decode_feeds(art, prompt, steps):
    """The decoder's feeds for ``prompt`` and then ``steps`` greedy steps of it (batch 1), from the
    whole graph's own choices: (feed, logits) per run."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from testbed.export.validation import prompt_ids

    meta = json.loads((art / "onnx_config.json").read_text())
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(str(art / "decoder.onnx"), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    presents = [n for n in names if n.startswith("present_")]
    ids = np.array([prompt_ids(AutoTokenizer.from_pretrained(art), prompt, "causal")], dtype=np.int64)
    past = {n.replace("present_", "past_"): np.zeros((1, meta["kv_heads"], 0, meta["head_dim"]), np.float32)
            for n in presents}
    t = 0
    for _ in range(steps):
        feed = {"input_ids": ids, "attention_mask": np.ones((1, t + ids.shape[1]), np.int64),
                "position_ids": np.arange(t, t + ids.shape[1], dtype=np.int64)[None], "no_eos": np.zeros(1, bool),
                **past}
        out = dict(zip(names, s.run(None, feed)))
        yield feed, out["logits"]
        t += ids.shape[1]
        past = {n.replace("present_", "past_"): out[n] for n in presents}
        ids = out["logits"].argmax(-1).reshape(1, 1).astype(np.int64)


def test_bounded_head_bound_holds_and_chooses_the_fp32_argmax(root):
    """The head's approximate logits lie within its bound of the fp32 logits at every step, and its
    choice is the fp32 logits' argmax (up to a near-tie: the candidates are summed in another order)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    art = _lossless_art(root)
    m = onnx.load(str(art / "decoder.onnx"))
    extra = ["greedy_head/bounded/approx", "greedy_head/bounded/err", "greedy_head/bounded/cand"]
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in extra)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    seen = 0
    for prompt in PROMPTS:
        for feed, logits in _decode_feeds(art, prompt, NEW):
            nxt, approx, err, cand = s.run(["next_ids", *extra], feed)
            assert np.all(err >= 0)
            off = np.abs(approx - logits)
            assert np.all(off <= err), float(np.max(off - err))
            top = np.sort(logits[0])[-2:]
            if top[1] - top[0] > NEAR_TIE:
                assert nxt[0] == logits[0].argmax()
            assert cand[0, nxt[0]] and cand.sum() < cand.size  # fewer candidates than ids
            seen += 1
    assert seen == len(PROMPTS) * NEW


def test_bounded_head_decodes_without_logits_and_gives_them_when_asked(root):
    """On the CPU the decoding session leaves the fp32 head out (no ``logits``; one MatMulNBits fewer),
    and a caller who asks for logits (or bans ids the head does not mask) gets the whole graph's."""
    import onnx

    from testbed.engines.onnxruntime.runner import OrtModel, SessionSettings, drop_logits
    from testbed.export.validation import prompt_ids

    art = _lossless_art(root)
    whole = onnx.load(str(art / "decoder.onnx"))
    kept = drop_logits(onnx.load(str(art / "decoder.onnx")))
    assert "logits" not in [o.name for o in kept.graph.output]
    assert [o.name for o in kept.graph.output] == [o.name for o in whole.graph.output if o.name != "logits"]
    nbits = [[n.name for n in g.graph.node if n.op_type == "MatMulNBits"] for g in (whole, kept)]
    assert set(nbits[0]) - set(nbits[1]) == {"head_MatMul.nbits"}
    assert "greedy_head/bounded/approx" in nbits[1]

    m = OrtModel(art, SessionSettings(threads=1, greedy_in_graph=False))
    assert m.logits_dropped and m.head
    assert "logits" not in [o.name for o in m.decoder.get_outputs()]
    from transformers import AutoTokenizer

    ids = np.array([prompt_ids(AutoTokenizer.from_pretrained(art), PROMPTS[1], "causal")], dtype=np.int64)
    banned = m.meta["banned"]
    plain = [int(n[0]) for n in m.greedy(ids, np.ones_like(ids), NEW, banned)]
    with_logits = list(m.greedy(ids, np.ones_like(ids), NEW, banned, return_logits=True))
    assert [int(n[0]) for n, _ in with_logits] == plain
    assert m._whole is not None  # the logits came from a session over the whole graph
    for n, logits in with_logits:
        top = np.sort(logits[0])[-2:]
        assert logits.shape == (1, m.meta["vocab_size"]) and np.all(np.isfinite(logits))
        if top[1] - top[0] > NEAR_TIE:
            assert int(n[0]) == int(logits[0].argmax())
    # an id the head does not mask: chosen over the whole graph's logits, without that id
    other = [int(n[0]) for n in m.greedy(ids, np.ones_like(ids), NEW, [*banned, plain[0]])]
    assert other and plain[0] not in other


def test_export_checks_the_bound_on_this_cpu(root):
    """The exporter traces the bounded head over the validation texts on the CPU that builds it and
    records it in the manifest; here the bound holds and the head is kept."""
    manifest = json.loads((_lossless_art(root) / "manifest.json").read_text())
    report = manifest["bounded_head"]
    assert report["kept"] and report["steps"] > 0 and 0 <= report["worst_error_to_bound"] <= 1
    assert report["choices_agreeing"] >= report["steps"] - 1  # (a near-tie may go either way)


def test_a_bound_that_fails_on_this_cpu_packs_without_the_bounded_head(root, tmp_path, monkeypatch):
    """Where the trace finds an approximate logit outside its bound (an ONNX Runtime that quantized
    activations otherwise), the artefact is packed again without the bounded head: the plain head,
    the fp32 logits in the decoding session, and the fp32 tokens."""
    import testbed.export.lossless as lossless

    real = lossless.trace_bounded_head

    def failing(art, prompts, steps):
        return [{**r, "ratio": 2.0} for r in real(art, prompts, steps)]

    monkeypatch.setattr(lossless, "trace_bounded_head", failing)
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    model = T.build_gguf_like(root)
    eng = _engine(model, "onnxruntime", "int4-lossless")
    ref = _engine(model, "onnxruntime", "fp32")
    try:
        art = eng.artifact
        manifest = json.loads((art / "manifest.json").read_text())
        meta = json.loads((art / "onnx_config.json").read_text())
        got = [g.token_ids for g in eng.generate(list(PROMPTS))]
        steps = [_fp32_steps(ref.artifact, p) for p in PROMPTS]
        assert not eng.ort.logits_dropped
    finally:
        eng.close()
        ref.close()
    assert manifest["bounded_head"]["kept"] is False and manifest["bounded_head"]["worst_error_to_bound"] == 2.0
    assert manifest["packed"]["decoder.onnx"]["bounded_head"] == 0
    assert "bounded" not in meta["greedy_head"]
    assert manifest["quantized_matmuls"]["decoder.onnx"]["MatMulNBits"] == 9  # no approximate pass
    for batch_ids, (want, gaps) in zip(got, steps):
        assert _same(batch_ids, want, gaps), (batch_ids, want)
