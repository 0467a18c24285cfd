"""The greedy choice inside the decoder graph: banned ids masked, ArgMax over the last position's logits.

A post-processing pass over any exported decoder graph whose first output is ``logits`` (B, V), the
last position's scores (every graph in :mod:`testbed.export.wrappers`, seq2seq or decoder-only; it
reads nothing family-specific).  It adds

* input ``no_eos`` (bool, (B,)): rows that may not end at this step (a minimum length not reached);
* output ``next_ids`` (int64, (B,)): ``argmax(where(banned | no_eos & eos, -inf, logits))``.

The banned ids (pad etc. from the DecodingSpec) and the EOS ids are constants of the graph, recorded
in the artefact's ``onnx_config.json`` under ``greedy_head``; a caller whose banned or EOS ids differ
asks for ``logits`` and chooses itself.  ``logits`` stays an output: ONNX Runtime returns only the
outputs a run asks for, so a step that wants ids only never copies the logits out, and validation
or anything else that needs the scores asks for them on the same graph.  ArgMax takes the first of
equal maxima, as ``numpy.argmax`` does.

The head is added to the fp32 graph before quantization; int8 (dynamic / static QDQ) and fp16
conversion leave its nodes alone (no MatMul, no weights).  The names it adds (the input, the output,
the prefix of its nodes) are the runner's contract, :mod:`testbed.engines.onnxruntime.contract`;
the runner removes the head again at session load when it chooses in numpy
(:func:`testbed.engines.onnxruntime.runner.strip_greedy_head`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from testbed.engines.onnxruntime.contract import HEAD_PREFIX as PREFIX
from testbed.engines.onnxruntime.contract import LOGITS, NEXT_IDS, NO_EOS

# bump when the head changes: part of the ONNX artefact key, so cached artefacts rebuild
VERSION = 1


def _vocab_flags(name: str, ids: Iterable[int], vocab: int) -> Any:
    import numpy as np
    from onnx import numpy_helper

    flags = np.zeros(vocab, dtype=bool)
    ids = sorted({int(i) for i in ids})
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ValueError(f"greedy head: {name} ids {bad} are outside the vocabulary [0, {vocab})")
    flags[ids] = True
    return numpy_helper.from_array(flags, PREFIX + name)


def add_greedy_head(model: Any, banned: Iterable[int], eos: Iterable[int], vocab: int) -> Any:
    """Append the masked ArgMax to ``model`` (an ``onnx.ModelProto``, changed in place and returned)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    outs = [o.name for o in g.output]
    if NEXT_IDS in outs:
        raise ValueError("greedy head: the graph already has an output 'next_ids'")
    if LOGITS not in outs:
        raise ValueError(f"greedy head: the graph has no output 'logits' (outputs: {', '.join(outs)})")
    elem = next(o for o in g.output if o.name == LOGITS).type.tensor_type.elem_type
    neg = np.array(-np.inf, dtype=np.float16 if elem == TensorProto.FLOAT16 else np.float32)
    g.initializer.extend([
        _vocab_flags("banned", banned, vocab), _vocab_flags("eos", eos, vocab),
        numpy_helper.from_array(neg, PREFIX + "neg_inf"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), PREFIX + "axis1"),
    ])
    p = PREFIX
    g.node.extend([
        helper.make_node("Unsqueeze", [NO_EOS, p + "axis1"], [p + "no_eos_col"], name=p + "unsqueeze"),
        helper.make_node("And", [p + "no_eos_col", p + "eos"], [p + "eos_masked"], name=p + "and"),
        helper.make_node("Or", [p + "eos_masked", p + "banned"], [p + "masked"], name=p + "or"),
        helper.make_node("Where", [p + "masked", p + "neg_inf", LOGITS], [p + "scores"], name=p + "where"),
        helper.make_node("ArgMax", [p + "scores"], [NEXT_IDS], name=p + "argmax", axis=1, keepdims=0),
    ])
    g.input.append(helper.make_tensor_value_info(NO_EOS, TensorProto.BOOL, ["batch"]))
    g.output.insert(0, helper.make_tensor_value_info(NEXT_IDS, TensorProto.INT64, ["batch"]))
    return model


def head_file(path: Path, banned: Iterable[int], eos: Iterable[int], vocab: int) -> dict[str, Any]:
    """Add the head to the graph file ``path`` in place; the description recorded in the artefact's meta."""
    import onnx

    banned, eos = sorted({int(i) for i in banned}), sorted({int(i) for i in eos})
    m = onnx.load(str(path), load_external_data=False)  # weights in external files stay where they are
    add_greedy_head(m, banned, eos, vocab)
    onnx.save(m, str(path))
    return {"version": VERSION, "banned": banned, "eos": eos}
