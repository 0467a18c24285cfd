"""int4-lossless (testbed.export.lossless): GGUF blocks found in fp32 weights, bit for bit, and the
packed MatMulNBits graph computing the fp32 graph's values."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import tiny_checkpoints as T

from testbed.export.lossless import find_q4, find_q8, pack_graph

RNG = np.random.default_rng(7)


def _w(n: int, k: int) -> np.ndarray:
    return (RNG.standard_normal((n, k)) * 0.05).astype(np.float32)


def test_q4_1_blocks_are_found_exactly():
    w = T.ggml_q4_1(_w(48, 96))
    b = find_q4(w)
    assert b is not None and b.q.max() <= 15 and b.q.shape == (48, 3, 32)
    rec = ((b.d[..., None] * b.q.astype(np.float32)).astype(np.float32) + b.m[..., None]).reshape(48, 96)
    assert np.array_equal(rec, w)  # bit for bit, as gguf-py dequantises
    assert np.array_equal(b.d.astype(np.float16).astype(np.float32), b.d)  # fp16 scales, as in the file


def test_q8_0_blocks_are_found_exactly():
    w = T.ggml_q8_0(_w(40, 64))
    b = find_q8(w)
    assert b is not None and np.abs(b.q.astype(int)).max() <= 127
    assert np.array_equal((b.d[..., None] * b.q.astype(np.float32)).astype(np.float32).reshape(40, 64), w)
    assert find_q4(w) is None  # 8-bit blocks have more than 16 levels


@pytest.mark.parametrize("finder", [find_q4, find_q8])
def test_weights_off_the_grid_are_not_packed(finder):
    assert finder(_w(16, 64)) is None  # plain fp32 weights
    assert finder(_w(16, 48)) is None  # K not a multiple of 32
    w = T.ggml_q4_1(_w(16, 64)) if finder is find_q4 else T.ggml_q8_0(_w(16, 64))
    w[3, 17] = np.nextafter(w[3, 17], np.float32(1))  # one weight one ulp off its block's grid
    assert finder(w) is None


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="pip install 'testbed[cpu]'")
def test_packed_graph_computes_the_fp32_graph():
    """q/k-like MatMuls sharing an input become one MatMulNBits (split after), a Q8_0 one doubles K, an
    off-grid one stays, a Q8_0 embedding table is gathered from its 8-bit values; outputs equal the fp32
    graph's up to fp32 rounding (the gathered rows bit for bit)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k = 64
    weights = {"wq": T.ggml_q4_1(_w(96, k)), "wk": T.ggml_q4_1(_w(32, k)), "wh": T.ggml_q8_0(_w(200, k)),
               "wf": _w(24, k)}
    table = T.ggml_q8_0(_w(50, k))
    nodes = [helper.make_node("MatMul", ["x", name], [f"y_{name}"], name=f"/{name}/MatMul") for name in weights]
    nodes.append(helper.make_node("Gather", ["table", "ids"], ["rows"], name="/embed/Gather", axis=0))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "l", k]),
                     helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "l"])],
        [helper.make_tensor_value_info(f"y_{n}", TensorProto.FLOAT, None) for n in weights]
        + [helper.make_tensor_value_info("rows", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w.T.copy(), n) for n, w in weights.items()]
        + [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    ref = model.SerializeToString()
    counts = pack_graph(model)
    assert counts == {"q4": 2, "q8": 1, "float": 1, "nbits_nodes": 2, "gather_q8": 1, "bounded_head": 0}
    assert sum(n.op_type == "MatMulNBits" for n in model.graph.node) == 2
    assert sum(n.op_type == "GatherBlockQuantized" for n in model.graph.node) == 1
    names = {i.name for i in model.graph.initializer}
    assert "wf" in names and "wq" not in names and "table" not in names

    def run(m: bytes, x: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        return ort.InferenceSession(m, so, providers=["CPUExecutionProvider"]).run(None, {"x": x, "ids": ids})

    for shape in ((1, 1, k), (2, 5, k)):  # a decoding step and a prefill
        x = RNG.standard_normal(shape).astype(np.float32)
        ids = RNG.integers(0, 50, shape[:2])
        *got_all, rows = run(model.SerializeToString(), x, ids)
        assert np.array_equal(rows, table[ids])
        for got, want, name in zip(got_all, run(ref, x, ids), weights):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
            exact = x.astype(np.float64) @ weights[name].T.astype(np.float64)
            np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="pip install 'testbed[cpu]'")
def test_bounded_head_chooses_the_masked_argmax_of_the_fp32_logits():
    """A Q8_0 head (its own rows: no tied table) under the greedy head: next_ids from the approximate
    logits, the bound and the candidates in fp32 equal the ArgMax of the masked fp32 logits for
    every row of a batch, with banned ids and EOS masked per row as the plain head masks them."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from testbed.export.greedy_head import add_greedy_head

    k, vocab, eos, banned = 96, 300, 2, [0, 7]
    w = T.ggml_q8_0(_w(vocab, k))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["scores"], name="/head/MatMul"),
         helper.make_node("Squeeze", ["scores", "axis"], ["logits"], name="/Squeeze")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, k])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", vocab])],
        initializer=[numpy_helper.from_array(w.T.copy(), "w"), numpy_helper.from_array(np.array([1]), "axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    add_greedy_head(model, banned, [eos], vocab)
    assert pack_graph(model)["bounded_head"] == 1
    assert [n.op_type for n in model.graph.node].count("MatMulNBits") == 2  # the fp32 head and the approximate
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rows = 256
    x = (RNG.standard_normal((rows, 1, k)) * RNG.uniform(0.1, 30, (rows, 1, 1))).astype(np.float32)
    x[::7, 0, 5] *= 40  # outlier dimensions, as a real model's hidden states have
    no_eos = RNG.random(rows) < 0.5
    nxt, logits = s.run(["next_ids", "logits"], {"x": x, "no_eos": no_eos})
    masked = logits.copy()
    masked[:, banned] = -np.inf
    masked[no_eos, eos] = -np.inf
    want = masked.argmax(-1)
    top = np.sort(masked, axis=-1)[:, -2:]
    clear = top[:, 1] - top[:, 0] > 1e-4  # rows without a near-tie (the candidates sum in another order)
    assert clear.sum() > rows * 0.9
    assert np.array_equal(nxt[clear], want[clear])
    assert not np.isin(nxt, banned).any() and not np.any(nxt[no_eos] == eos)
