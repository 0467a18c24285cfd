"""The whole greedy loop in one ONNX Runtime call: the decoder graph wrapped in an ONNX ``Loop``.

A decoding step through Python costs, besides the graph's kernels, the ``run()`` call itself: some
thirty inputs and outputs converted between numpy and ONNX Runtime, and the engine's bookkeeping
between steps (``bench/results/engines_marian*.md``: the *TPOT overhead* column).  For decoding
that nobody watches token by token (``Engine.generate``: Offline batches, non-streamed requests)
:func:`loop_model` builds, from a seq2seq artefact's decoder graph with its greedy head, a graph
that runs up to ``max_steps`` steps inside ONNX Runtime and returns the chosen ids of every step.
The streaming path stays one ``run()`` per step.

Opt-in (``OnnxRuntimeEngine(..., greedy_loop=True)``; ``bench/engines.py`` runs it as a variant) because
on the CPU it measured slower than one ``run()`` per step, at batch 1 and at batch 32 (the
``greedy_loop`` row of ``bench/results/engines_marian_avx512.md``; ``bench/results/ort_cpu_paths.md``):
an iteration took 145 us where the step graph's ``run()`` took 130 us, more than the Python between
two ``run()`` calls it saves; inside the graph the greedy choice is ONNX Runtime's ``ArgMax`` (and a
``Where`` for the banned ids) over the vocabulary, 0.6-1.0 ns per logit on one core against numpy's
0.05 (159 us against 12 us for 32 x 8,000 logits).

Rows finish inside the loop (an EOS id once EOS is allowed, or their own token budget); a finished
row keeps its place (its tokens after the finish are ignored) until the loop stops, which it does
when ``stop_after`` rows have finished in this call or after ``max_steps`` steps.  The caller then
drops the finished rows from the tensors (:meth:`testbed.engines.onnxruntime.batch.OrtBatch._steps`)
and calls again: a batch does not carry finished rows for long.

Graph (every name below is an input or output of the outer graph):

* inputs: ``max_steps`` (int64 scalar), ``stop_after`` (int64 scalar), ``eos_ids`` (int64 (E,)),
  per row ``min_new`` / ``max_new`` (int64 (B,): EOS allowed once ``count >= min_new``, finished at
  ``count == max_new``), the carried state's start ``init/<name>`` (``input_ids`` (B, 1),
  ``position_ids`` (B, 1), ``self_bias`` (B, 1, 1, T), ``past_<k|v>.<l>``, ``done`` (B,) bool,
  ``count`` (B,) int64 tokens so far), and the decoder's fixed inputs as the step graph names them
  (``encoder_bias``, ``cross_<k|v>.<l>``);
* outputs: ``final/<name>`` for the carried state after the last step (``self_bias`` includes the
  last step's column) and ``ids`` (steps, B) int64.

The body is the step graph (its nodes and weights, unchanged) between a few nodes that advance the
state: the new ``self_bias`` column (0: a real position), ``no_eos = count < min_new``, the next
input id, the position + 1, the finished flags and the count of rows finished in this call.
"""

from __future__ import annotations

from typing import Any

from testbed.engines.onnxruntime.contract import NEXT_IDS, NO_EOS, PAST, PRESENT

P = "loop/"  # prefix of every name the wrapper adds inside the body
# the carried state, in the Loop's order after the decoder's cache tensors are inserted
STATE = ("input_ids", "position_ids", "self_bias")
FLAGS = ("done", "count")
IDS = "ids"


def loop_model(step: Any) -> Any:
    """The Loop graph around ``step``, a seq2seq decoder ``onnx.ModelProto`` with the greedy head (not changed)."""
    from onnx import TensorProto, helper

    g = step.graph
    ins = {i.name: i for i in g.input}
    outs = [o.name for o in g.output]
    missing = [n for n in (*STATE, NO_EOS, "encoder_bias") if n not in ins] + ([] if NEXT_IDS in outs else [NEXT_IDS])
    if missing:
        raise ValueError(f"greedy loop: the decoder graph lacks {', '.join(missing)} (a seq2seq step graph with "
                         "its greedy head is needed)")
    past = [n for n in ins if n.startswith(PAST)]
    present = [PRESENT + n.removeprefix(PAST) for n in past]
    if any(p not in outs for p in present):
        raise ValueError("greedy loop: the decoder graph's present_* outputs do not match its past_* inputs")
    carried = [*STATE, *past, *FLAGS]
    fixed = [n for n in ins if n not in (*STATE, *past, NO_EOS)]

    def vi(name: str, like: str | None = None, elem: int | None = None, shape: list[Any] | None = None) -> Any:
        if like is not None:
            t = ins[like].type.tensor_type
            return helper.make_tensor_value_info(name, t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim])
        assert elem is not None
        return helper.make_tensor_value_info(name, elem, shape)

    i64, b = TensorProto.INT64, TensorProto.BOOL
    bias_elem = ins["self_bias"].type.tensor_type.elem_type
    c = helper.make_tensor
    nodes = [
        # the new self_bias column: zeros (B, 1, 1, 1) -> self_bias, the step graph's input
        helper.make_node("Shape", ["position_ids"], [P + "b1"]),  # (B, 1)
        helper.make_node("Concat", [P + "b1", P + "ones2"], [P + "col_shape"], axis=0),
        helper.make_node("ConstantOfShape", [P + "col_shape"], [P + "col"], value=c("z", bias_elem, [1], [0])),
        helper.make_node("Concat", [P + "self_bias_in", P + "col"], ["self_bias"], axis=3),
        helper.make_node("Less", [P + "count_in", "min_new"], [NO_EOS]),
        # ---- the step graph's nodes go here ----
        helper.make_node("Unsqueeze", [NEXT_IDS, P + "axis1"], [P + "input_ids_out"]),
        helper.make_node("Add", ["position_ids", P + "one"], [P + "position_ids_out"]),
        helper.make_node("Add", [P + "count_in", P + "one"], [P + "count_out"]),
        helper.make_node("Equal", [P + "input_ids_out", "eos_ids"], [P + "eos_hit"]),  # (B, E)
        helper.make_node("Cast", [P + "eos_hit"], [P + "eos_hit_i"], to=i64),
        helper.make_node("ReduceSum", [P + "eos_hit_i", P + "axis1"], [P + "eos_any_i"], keepdims=0),
        helper.make_node("Cast", [P + "eos_any_i"], [P + "is_eos"], to=b),
        helper.make_node("GreaterOrEqual", [P + "count_out", "max_new"], [P + "at_limit"]),
        helper.make_node("Or", [P + "is_eos", P + "at_limit"], [P + "ends"]),
        helper.make_node("Not", [P + "done_in"], [P + "live"]),
        helper.make_node("And", [P + "ends", P + "live"], [P + "ends_now"]),
        helper.make_node("Or", [P + "done_in", P + "ends_now"], [P + "done_out"]),
        helper.make_node("Cast", [P + "ends_now"], [P + "ends_now_i"], to=i64),
        helper.make_node("ReduceSum", [P + "ends_now_i"], [P + "ended"], keepdims=0),
        helper.make_node("Add", [P + "ended_in", P + "ended"], [P + "ended_out"]),
        helper.make_node("Less", [P + "ended_out", "stop_after"], [P + "cond_out"]),
        helper.make_node("Identity", [NEXT_IDS], [P + "ids"]),
    ]
    consts = [c(P + "ones2", i64, [2], [1, 1]), c(P + "axis1", i64, [1], [1]), c(P + "one", i64, [], [1])]
    body_nodes = nodes[:5] + list(g.node) + nodes[5:]
    body_inputs = [vi(P + "iter", elem=i64, shape=[]), vi(P + "cond_in", elem=b, shape=[]),
                   vi("input_ids", "input_ids"), vi("position_ids", "position_ids"),
                   vi(P + "self_bias_in", "self_bias"), *[vi(n, n) for n in past],
                   vi(P + "done_in", elem=b, shape=["batch"]), vi(P + "count_in", elem=i64, shape=["batch"]),
                   vi(P + "ended_in", elem=i64, shape=[])]
    body_outputs = [vi(P + "cond_out", elem=b, shape=[]), vi(P + "input_ids_out", "input_ids"),
                    vi(P + "position_ids_out", "position_ids"), vi("self_bias", "self_bias"),
                    *[vi(pr, pa) for pr, pa in zip(present, past)],
                    vi(P + "done_out", elem=b, shape=["batch"]), vi(P + "count_out", elem=i64, shape=["batch"]),
                    vi(P + "ended_out", elem=i64, shape=[]), vi(P + "ids", elem=i64, shape=["batch"])]
    body = helper.make_graph(body_nodes, "greedy_step", body_inputs, body_outputs,
                             initializer=[*g.initializer, *consts])
    body.value_info.extend(g.value_info)

    outer_in = [vi("max_steps", elem=i64, shape=[]), vi("stop_after", elem=i64, shape=[]),
                vi("eos_ids", elem=i64, shape=["eos"]), vi("min_new", elem=i64, shape=["batch"]),
                vi("max_new", elem=i64, shape=["batch"])]
    outer_in += [vi("init/" + n, n) for n in (*STATE, *past)]
    outer_in += [vi("init/done", elem=b, shape=["batch"]), vi("init/count", elem=i64, shape=["batch"])]
    outer_in += [vi(n, n) for n in fixed]
    loop_in = ["max_steps", P + "true", *["init/" + n for n in carried], P + "zero"]
    loop_out = [*["final/" + n for n in carried], P + "ended_total", IDS]
    loop = helper.make_node("Loop", loop_in, loop_out, body=body, name=P + "loop")
    outer_out = [vi("final/" + n, n) for n in (*STATE, *past)]
    outer_out += [vi("final/done", elem=b, shape=["batch"]), vi("final/count", elem=i64, shape=["batch"]),
                  vi(IDS, elem=i64, shape=["steps", "batch"])]
    graph = helper.make_graph([loop], "greedy_loop", outer_in, outer_out,
                              initializer=[c(P + "true", b, [], [True]), c(P + "zero", i64, [], [0])])
    model = helper.make_model(graph, opset_imports=list(step.opset_import), producer_name="testbed greedy loop")
    model.ir_version = step.ir_version
    return model


def has_external_data(model: Any) -> bool:
    """Does any weight live in a file beside the graph (then the graph cannot be rebuilt in memory)?"""
    from onnx import TensorProto

    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)
