"""The greedy head (testbed.export.greedy_head) on a small graph whose logits are its input: the ids it
chooses equal numpy's masked argmax, banned ids are never chosen, and stripping it (the runner's
strip_greedy_head, at session load) restores the graph."""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper  # noqa: E402

from testbed.engines.onnxruntime.contract import NEXT_IDS, NO_EOS  # noqa: E402
from testbed.engines.onnxruntime.runner import strip_greedy_head  # noqa: E402
from testbed.export.greedy_head import add_greedy_head  # noqa: E402

V = 50
BANNED = [0, 7]
EOS = [2]


def _graph() -> object:
    """x (B, V) -> logits = x * 1 and present_k.0 = x: the shape of a decoder graph's outputs."""
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "one"], ["logits"]), helper.make_node("Identity", ["x"], ["present_k.0"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", V])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", V]),
         helper.make_tensor_value_info("present_k.0", TensorProto.FLOAT, ["batch", V])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _session(model: object) -> object:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]


def _reference(x: np.ndarray, no_eos: np.ndarray) -> np.ndarray:
    s = x.copy()
    s[:, BANNED] = -np.inf
    s[np.ix_(np.flatnonzero(no_eos), EOS)] = -np.inf
    return s.argmax(-1)


def test_head_equals_masked_argmax_and_never_picks_banned_ids():
    sess = _session(add_greedy_head(_graph(), BANNED, EOS, V))
    rng = np.random.default_rng(0)
    for trial in range(200):
        b = 1 + trial % 5
        x = rng.standard_normal((b, V)).astype(np.float32)
        # make a banned id or EOS the largest score in some rows
        x[:, rng.choice(BANNED + EOS)] = 10.0
        if trial % 7 == 0:
            x[:, 3] = x[:, 4] = 20.0  # a tie: the first index wins, as in numpy
        no_eos = rng.random(b) < 0.5
        ids, logits, present = sess.run([NEXT_IDS, "logits", "present_k.0"], {"x": x, NO_EOS: no_eos})
        assert ids.dtype == np.int64 and ids.shape == (b,)
        np.testing.assert_array_equal(ids, _reference(x, no_eos))
        assert not set(ids.tolist()) & set(BANNED)
        np.testing.assert_array_equal(logits, x)  # the scores themselves stay unmasked and available


def test_eos_chosen_only_where_allowed():
    sess = _session(add_greedy_head(_graph(), BANNED, EOS, V))
    x = np.zeros((2, V), dtype=np.float32)
    x[:, EOS[0]] = 5.0
    x[:, 9] = 1.0
    ids = sess.run([NEXT_IDS], {"x": x, NO_EOS: np.array([True, False])})[0]
    assert ids.tolist() == [9, EOS[0]]


def test_strip_restores_the_graph_and_bad_ids_are_refused():
    m = add_greedy_head(_graph(), BANNED, EOS, V)
    strip_greedy_head(m)
    assert m.SerializeToString() == _graph().SerializeToString()  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"banned ids \[50\] are outside the vocabulary"):
        add_greedy_head(_graph(), [V], EOS, V)
    with pytest.raises(ValueError, match="no output 'logits'"):
        g = _graph()
        g.graph.output[0].name = "scores"  # type: ignore[attr-defined]
        add_greedy_head(g, BANNED, EOS, V)
