"""``int4-lossless``: a checkpoint dequantised from 4/8-bit blocks, packed back into them, computed in fp32.

A model that ships as GGUF (the embedded chat model: Q4_1 layers, a Q8_0 embedding/head) reaches
the exporter as fp32 weights that are *exactly* ``d * q + m`` per block of 32 inputs (Q4_1: ``q`` in
0..15, ``d`` and ``m`` fp16) or ``d * q`` (Q8_0: ``q`` in -127..127).  This module finds those blocks
in the fp32 graph's weight MatMuls, checks that every weight is reproduced bit for bit, and replaces
each such MatMul with ONNX Runtime's ``MatMulNBits`` (4-bit blocks, fp32 arithmetic: accuracy level
0, the activations are not quantized):

* Q4_1 weight ``W[n, k] = d[n, b] * q[n, k] + m[n, b]`` (``b = k // 32``)::

      y = MatMulNBits(x; q, d, zero point 0) + BlockSum(x) @ m^T

  where ``BlockSum(x)[b] = sum of x over block b`` (``d * q`` is exact in fp32: a 4-bit integer times
  an fp16 scale);
* Q8_0 weight ``W = d * q``: with ``u = q + 128 = 16 h + l`` (``h``, ``l`` 4-bit),
  ``d * q = 16 d (h - 8) + d l``, one ``MatMulNBits`` over ``[x, x]`` (K doubled) whose first half
  holds ``h`` with scale ``16 d`` and zero point 8, the second ``l`` with scale ``d`` and zero point 0.

So the graph computes what the fp32 graph computes, up to the order of fp32 additions (the same
kind of difference as between two fp32 kernels), and reads about 6 bits per weight instead of 32
(4-bit values, an fp32 scale and minimum per 32 weights).

**The bounded greedy head.**  Where the graph has the greedy head (:mod:`testbed.export.greedy_head`)
and its logits come from a Q8_0 MatMul (the embedded chat model's 28 M-weight head: about a fifth
of a step in fp32), ``next_ids`` is chosen without computing every logit in fp32: one pass of the same 4-bit
blocks at accuracy level 4 (activations quantized to int8 per block of 32, integer products)
gives every logit to within a bound, ``|approx - exact| <= sum_b amax_b / 127 * sum_{k in b} |W[n, k]|``
(twice the largest error of rounding to the nearest step ``amax_b / 127``, which also covers the
fp32 rounding of the approximate sum); the ids whose upper bound reaches the largest lower bound
among the ids the head allows are the only ones that can be the greedy choice, and only those (a
few dozen of 49,152 on the embedded chat model's replies: ``bench/bounded_head.py``) are computed
exactly in fp32 from the Q8_0 rows (gathered from the tied
embedding table's 8-bit values where it is the same table).  ``next_ids`` is then the ArgMax over
exact values, as the plain head's; ``logits`` stays the fp32 output for whoever asks for it (the
runner leaves it out of the decoding session, :class:`testbed.engines.onnxruntime.runner.OrtModel`).
The bound rests on how ONNX Runtime quantizes the activations, so the exporter checks it with
:func:`trace_bounded_head` on the CPU that builds the artefact and packs without the bounded head
where it fails.

A MatMul whose weight is not exactly on such a grid stays as it was; a graph where none is raises a
ConfigError (the precision needs a checkpoint dequantised from GGUF blocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BLOCK = 32
# part of the artefact's cache key: a change to the packing re-builds int4-lossless artefacts
VERSION = 4  # 2: Q8_0 embedding tables gathered from their 8-bit values; 3: the bounded greedy head;
# 4: its bound checked at export on the building CPU
MS_DOMAIN = "com.microsoft"


@dataclass
class Q4Blocks:
    """``W (N, K) = d * q + m`` per block: q (N, K/32, 32) uint8 in 0..15, d and m (N, K/32) fp32."""

    q: np.ndarray
    d: np.ndarray
    m: np.ndarray


@dataclass
class Q8Blocks:
    """``W (N, K) = d * q`` per block: q (N, K/32, 32) int8 in -127..127, d (N, K/32) fp32."""

    q: np.ndarray
    d: np.ndarray


def _fp16_exact(a: np.ndarray) -> bool:
    return bool(np.all(a.astype(np.float16).astype(np.float32) == a))


def find_q4(w: np.ndarray) -> Q4Blocks | None:
    """The Q4_1 blocks of ``w`` (N, K) if every weight is exactly ``fp32(d * q) + m`` (else None)."""
    n, k = w.shape
    if k % BLOCK:
        return None
    b = w.reshape(n, k // BLOCK, BLOCK).astype(np.float32)
    m = b.min(axis=-1)  # the block minimum has q = 0 (ggml's Q4_1 rounds from the minimum)
    if not _fp16_exact(m):
        return None
    span = b.max(axis=-1) - m
    d = np.zeros_like(m)
    q = np.zeros(b.shape, dtype=np.uint8)
    todo = span > 0  # a constant block is q = 0, d = 0 as it stands
    for top in range(15, 0, -1):  # the block's largest q: 15 unless the block's top codes are unused
        if not todo.any():
            break
        cand = (span / np.float32(top)).astype(np.float16).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            qq = np.rint((b - m[..., None]) / cand[..., None])
        ok = todo & (cand > 0) & np.all((qq >= 0) & (qq <= 15), axis=-1)
        rec = (cand[..., None] * np.nan_to_num(qq)).astype(np.float32) + m[..., None]
        ok &= np.all(rec == b, axis=-1)
        d[ok], q[ok] = cand[ok], qq[ok].astype(np.uint8)
        todo &= ~ok
    if todo.any():
        return None
    return Q4Blocks(q=q, d=d, m=m)


def find_q8(w: np.ndarray) -> Q8Blocks | None:
    """The Q8_0 blocks of ``w`` (N, K) if every weight is exactly ``fp32(d * q)``, |q| <= 127 (else None)."""
    n, k = w.shape
    if k % BLOCK:
        return None
    b = w.reshape(n, k // BLOCK, BLOCK).astype(np.float32)
    amax = np.abs(b).max(axis=-1)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.nan_to_num(np.rint(b / d[..., None]))
    if np.any(np.abs(q) > 127) or not np.all((d[..., None] * q).astype(np.float32) == b):
        return None
    return Q8Blocks(q=q.astype(np.int8), d=d)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """Values 0..15, pairs along the last axis -> bytes, the first value in the low nibble."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _zero_points(n: int, blocks: int, value: np.ndarray | int) -> np.ndarray:
    """MatMulNBits' packed 4-bit zero points: (N, ceil(blocks / 2)) bytes, flattened."""
    z = np.broadcast_to(np.asarray(value, dtype=np.uint8), (n, blocks)).copy()
    if blocks % 2:
        z = np.concatenate([z, np.zeros((n, 1), dtype=np.uint8)], axis=1)
    return _pack_nibbles(z).reshape(-1)


def pack_graph(model: Any, bound_head: bool = True) -> dict[str, int]:
    """Replace the weight MatMuls of ``model`` (an onnx.ModelProto, changed in place) whose weights
    lie exactly on Q4_1 / Q8_0 blocks; return counts ``{"q4": .., "q8": .., "float": .., "nbits_nodes": ..,
    "gather_q8": ..}``.

    Q4_1 MatMuls that read the same input (q/k/v, gate/up) become one ``MatMulNBits`` whose output
    is split: one call, one block sum and one minimums' term for the group.  An embedding table on
    Q8_0 blocks (a Gather of rows) becomes ``GatherBlockQuantized`` over its 8-bit values: each row
    it returns is ``(q + 128 - 128) * d``, the fp32 row bit for bit, from a quarter of the memory.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    users: dict[str, int] = {}
    for node in g.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    counts = {"q4": 0, "q8": 0, "float": 0, "nbits_nodes": 0, "gather_q8": 0, "bounded_head": 0}
    q4: dict[str, Q4Blocks] = {}  # MatMul output -> its blocks
    q8: dict[str, Q8Blocks] = {}
    groups: dict[tuple[str, int], list[Any]] = {}  # (input, K) -> the Q4 MatMuls reading it, in graph order
    tables: dict[str, Q8Blocks] = {}  # Gather output -> the Q8_0 blocks of its table's rows
    for node in g.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is not None and len(table.dims) == 2 and _axis(node) == 0:
            if (rows := find_q8(numpy_helper.to_array(table))) is not None:
                tables[node.output[0]] = rows
            continue
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or len(weight.dims) != 2:
            continue
        w = numpy_helper.to_array(weight).T  # (N, K): one row per output
        if (b4 := find_q4(w)) is not None:
            q4[node.output[0]] = b4
            groups.setdefault((node.input[0], w.shape[1]), []).append(node)
        elif (b8 := find_q8(w)) is not None:
            q8[node.output[0]] = b8
        else:
            counts["float"] += 1
    counts["q4"], counts["q8"], counts["gather_q8"] = len(q4), len(q8), len(tables)
    leader = {nodes[0].output[0]: nodes for nodes in groups.values()}  # the group's call goes where its first was
    new_nodes: list[Any] = []
    new_inits: list[Any] = []
    dropped: set[str] = set()
    for node in g.node:
        out = node.output[0] if node.op_type in ("MatMul", "Gather") else None
        if out not in q4 and out not in q8 and out not in tables:
            new_nodes.append(node)
            continue
        weight = node.input[0] if out in tables else node.input[1]
        users[weight] -= 1
        if users[weight] == 0:  # the fp32 weight has no other reader left
            dropped.add(weight)
        if out in tables:
            _gather_q8(node, tables[out], new_nodes, new_inits)
        elif out in leader:
            _q4_group(leader[out], [q4[n.output[0]] for n in leader[out]], new_nodes, new_inits)
            counts["nbits_nodes"] += 1
        elif out in q8:
            _q8(node, q8[out], new_nodes, new_inits)
            counts["nbits_nodes"] += 1
    head = _head_matmul(new_nodes, q8, inits) if bound_head else None
    if head is not None:
        same = [_name(n) for n in g.node if n.op_type == "Gather" and n.output[0] in tables
                and np.array_equal(tables[n.output[0]].q, q8[head.output[0]].q)
                and np.array_equal(tables[n.output[0]].d, q8[head.output[0]].d)]
        _bounded_head(head, q8[head.output[0]], same[0] if same else None, new_nodes, new_inits)
        counts["bounded_head"] = 1
    keep = [i for i in g.initializer if i.name not in dropped]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    del g.node[:]
    g.node.extend(new_nodes)
    if (q4 or q8 or tables) and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return counts


def _name(node: Any) -> str:
    return node.name.strip("/").replace("/", "_") or node.output[0]


def _axis(node: Any) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "axis"), 0)


def _q8_rows(q8: Q8Blocks, name: str) -> list[Any]:
    """Q8_0 blocks as rows for ``GatherBlockQuantized`` (8 bits, zero point 128): initializers
    ``name.q8`` (N, K) uint8 ``q + 128``, ``name.scale`` (N, K/32) and ``name.zp``."""
    from onnx import numpy_helper

    n, nb = q8.d.shape
    return [numpy_helper.from_array((q8.q.astype(np.int16) + 128).astype(np.uint8).reshape(n, nb * BLOCK),
                                    f"{name}.q8"),
            numpy_helper.from_array(q8.d, f"{name}.scale"),
            numpy_helper.from_array(np.full((n, nb), 128, dtype=np.uint8), f"{name}.zp")]


def _gather_q8(node: Any, q8: Q8Blocks, out_nodes: list[Any], out_inits: list[Any]) -> None:
    """A Gather of rows from a Q8_0 table as GatherBlockQuantized over the 8-bit values (zero point 128)."""
    from onnx import helper

    base = _name(node)
    out_inits += _q8_rows(q8, base)
    out_nodes.append(helper.make_node("GatherBlockQuantized", [f"{base}.q8", node.input[1], f"{base}.scale",
                                                               f"{base}.zp"], [node.output[0]], name=f"{base}.q8",
                                      domain=MS_DOMAIN, bits=8, block_size=BLOCK, gather_axis=0, quantize_axis=1))


def _q4_group(nodes: list[Any], blocks: list[Q4Blocks], out_nodes: list[Any], out_inits: list[Any]) -> None:
    """One MatMulNBits for the Q4_1 MatMuls ``nodes`` that read the same input, plus the minimums' term."""
    from onnx import helper, numpy_helper

    base = _name(nodes[0])
    x = nodes[0].input[0]
    q = np.concatenate([b.q for b in blocks])
    d = np.concatenate([b.d for b in blocks])
    m = np.concatenate([b.m for b in blocks])
    n, nb = d.shape
    k = nb * BLOCK
    whole = f"{base}.y" if len(nodes) > 1 else nodes[0].output[0]
    out_inits += [numpy_helper.from_array(_pack_nibbles(q), f"{base}.q4"),
                  numpy_helper.from_array(d.reshape(-1), f"{base}.scale"),
                  numpy_helper.from_array(_zero_points(n, nb, 0), f"{base}.zp"),
                  numpy_helper.from_array(m.T.copy(), f"{base}.min"),
                  numpy_helper.from_array(np.array([0, 0, nb, BLOCK], dtype=np.int64), f"{base}.blocks"),
                  numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{base}.axis")]
    out_nodes += [
        helper.make_node("MatMulNBits", [x, f"{base}.q4", f"{base}.scale", f"{base}.zp"], [f"{base}.dq"],
                         name=f"{base}.nbits", domain=MS_DOMAIN, K=k, N=n, bits=4, block_size=BLOCK, accuracy_level=0),
        # the block minimums' term: the sum of x over each block times m
        helper.make_node("Reshape", [x, f"{base}.blocks"], [f"{base}.xb"], name=f"{base}.xb"),
        helper.make_node("ReduceSum", [f"{base}.xb", f"{base}.axis"], [f"{base}.bsum"], name=f"{base}.bsum",
                         keepdims=0),
        helper.make_node("MatMul", [f"{base}.bsum", f"{base}.min"], [f"{base}.mterm"], name=f"{base}.mterm"),
        helper.make_node("Add", [f"{base}.dq", f"{base}.mterm"], [whole], name=f"{base}.add"),
    ]
    if len(nodes) > 1:
        sizes = numpy_helper.from_array(np.array([b.d.shape[0] for b in blocks], dtype=np.int64), f"{base}.sizes")
        out_inits.append(sizes)
        out_nodes.append(helper.make_node("Split", [whole, f"{base}.sizes"], [nd.output[0] for nd in nodes],
                                          name=f"{base}.split", axis=-1))


def _q8(node: Any, q8: Q8Blocks, out_nodes: list[Any], out_inits: list[Any]) -> None:
    """A Q8_0 MatMul as one MatMulNBits over ``[x, x]``: high nibbles (scale 16 d, zero point 8), then low."""
    from onnx import helper, numpy_helper

    base = _name(node)
    x, y = node.input[0], node.output[0]
    n, nb = q8.d.shape
    u = q8.q.astype(np.int16) + 128
    hi, lo = (u >> 4).astype(np.uint8), (u & 15).astype(np.uint8)
    scales = np.concatenate([q8.d * np.float32(16), q8.d], axis=1)  # 16 d is exact
    zps = np.concatenate([np.full((n, nb), 8, np.uint8), np.zeros((n, nb), np.uint8)], axis=1)
    out_inits += [numpy_helper.from_array(np.concatenate([_pack_nibbles(hi), _pack_nibbles(lo)], axis=1), f"{base}.q8"),
                  numpy_helper.from_array(scales.reshape(-1), f"{base}.scale"),
                  numpy_helper.from_array(_zero_points(n, 2 * nb, zps), f"{base}.zp")]
    out_nodes += [
        helper.make_node("Concat", [x, x], [f"{base}.xx"], name=f"{base}.xx", axis=-1),
        helper.make_node("MatMulNBits", [f"{base}.xx", f"{base}.q8", f"{base}.scale", f"{base}.zp"], [y],
                         name=f"{base}.nbits", domain=MS_DOMAIN, K=2 * nb * BLOCK, N=n, bits=4, block_size=BLOCK,
                         accuracy_level=0),
    ]


def _head_matmul(nodes: list[Any], q8: dict[str, Q8Blocks], inits: dict[str, Any]) -> Any:
    """The packed Q8_0 MatMul (its ``name.nbits`` node) that computes the greedy head's logits: the
    graph's only Q8_0 MatMul as wide as the head's vocabulary; None without a greedy head or one such."""
    from testbed.engines.onnxruntime.contract import HEAD_PREFIX, LOGITS

    flags = inits.get(HEAD_PREFIX + "banned")  # the head's (V,) mask: its vocabulary
    if flags is None or not any(n.name == HEAD_PREFIX + "where" and n.input[2] == LOGITS for n in nodes):
        return None
    wide = [n for n in nodes if n.op_type == "MatMulNBits" and n.output[0] in q8
            and q8[n.output[0]].d.shape[0] == flags.dims[0]]
    return wide[0] if len(wide) == 1 else None


def _bounded_head(head: Any, q8: Q8Blocks, table: str | None, out_nodes: list[Any], out_inits: list[Any]) -> None:
    """The greedy head's ``next_ids`` from approximate logits, a bound, and the candidates in fp32
    (module docstring).  ``head`` is the packed Q8_0 ``MatMulNBits`` (input ``[x, x]``); ``table`` the
    name under which the same blocks are gathered as rows (the tied embedding), or None."""
    from onnx import helper, numpy_helper

    from testbed.engines.onnxruntime.contract import HEAD_PREFIX, NEXT_IDS

    p = HEAD_PREFIX + "bounded/"
    concat = next(n for n in out_nodes if n.output[0] == head.input[0])
    x = concat.input[0]
    n, nb = q8.d.shape
    k = nb * BLOCK
    # per block and id: sum |W| of both nibble halves (>= sum |W|; exact small integers times d)
    u = q8.q.astype(np.int16) + 128
    mag = (16 * np.abs((u >> 4) - 8) + (u & 15)).sum(axis=-1).astype(np.float64) * q8.d
    if table is None:
        table = p + "rows"
        out_inits += _q8_rows(q8, table)
    out_inits += [numpy_helper.from_array((mag.T / 127).astype(np.float32), p + "bound"),
                  numpy_helper.from_array(np.array([-1, k], dtype=np.int64), p + "rows_shape"),
                  numpy_helper.from_array(np.array([-1, nb, BLOCK], dtype=np.int64), p + "blocks"),
                  numpy_helper.from_array(np.array([-1], dtype=np.int64), p + "last"),
                  numpy_helper.from_array(np.array(0, dtype=np.int64), p + "zero"),
                  numpy_helper.from_array(np.array(1, dtype=np.int64), p + "one"),
                  numpy_helper.from_array(np.array(-np.inf, dtype=np.float32), p + "neg_inf")]
    masked = HEAD_PREFIX + "masked"
    nodes = [
        ("Reshape", [x, p + "rows_shape"], [p + "x"], {}),  # (B, K): the last position of each row
        ("Concat", [p + "x", p + "x"], [p + "xx"], {"axis": -1}),
        ("MatMulNBits", [p + "xx", *head.input[1:]], [p + "approx"],
         {"domain": MS_DOMAIN, "K": 2 * k, "N": n, "bits": 4, "block_size": BLOCK, "accuracy_level": 4}),
        ("Reshape", [p + "x", p + "blocks"], [p + "xb"], {}),
        ("Abs", [p + "xb"], [p + "abs"], {}),
        ("ReduceMax", [p + "abs"], [p + "amax"], {"axes": [-1], "keepdims": 0}),
        ("MatMul", [p + "amax", p + "bound"], [p + "err"], {}),
        ("Sub", [p + "approx", p + "err"], [p + "low"], {}),
        ("Where", [masked, p + "neg_inf", p + "low"], [p + "low_allowed"], {}),
        ("ReduceMax", [p + "low_allowed"], [p + "floor"], {"axes": [1], "keepdims": 1}),
        ("Add", [p + "approx", p + "err"], [p + "high"], {}),
        ("GreaterOrEqual", [p + "high", p + "floor"], [p + "reach"], {}),
        ("Not", [masked], [p + "allowed"], {}),
        ("And", [p + "reach", p + "allowed"], [p + "cand"], {}),
        ("NonZero", [p + "cand"], [p + "idx"], {}),  # (2, C): row, id
        ("Gather", [p + "idx", p + "zero"], [p + "cand_rows"], {"axis": 0}),
        ("Gather", [p + "idx", p + "one"], [p + "cand_ids"], {"axis": 0}),
        ("GatherBlockQuantized", [f"{table}.q8", p + "cand_ids", f"{table}.scale", f"{table}.zp"], [p + "w"],
         {"domain": MS_DOMAIN, "bits": 8, "block_size": BLOCK, "gather_axis": 0, "quantize_axis": 1}),
        ("Gather", [p + "x", p + "cand_rows"], [p + "xc"], {"axis": 0}),
        ("Mul", [p + "xc", p + "w"], [p + "prod"], {}),
        ("ReduceSum", [p + "prod", p + "last"], [p + "exact"], {"keepdims": 0}),  # (C,)
        ("Shape", [p + "approx"], [p + "shape"], {}),
        ("Expand", [p + "neg_inf", p + "shape"], [p + "empty"], {}),
        ("Transpose", [p + "idx"], [p + "pairs"], {"perm": [1, 0]}),
        ("ScatterND", [p + "empty", p + "pairs", p + "exact"], [p + "scores"], {}),
    ]
    for op, ins, outs, attrs in nodes:
        out_nodes.append(helper.make_node(op, ins, outs, name=outs[0], **attrs))
    # the head's ArgMax reads the candidates' exact scores (after them, in graph order); its Where
    # over the fp32 logits goes
    argmax = next(nd for nd in out_nodes if nd.output[0] == NEXT_IDS)
    argmax.input[0] = p + "scores"
    out_nodes[:] = [nd for nd in out_nodes if nd.name != HEAD_PREFIX + "where" and nd is not argmax] + [argmax]


def trace_bounded_head(art: Path, prompts: list[list[int]], steps: int) -> list[dict[str, Any]]:
    """The bounded head at each greedy step of ``prompts`` (token ids, batch 1) through the artefact's
    whole decoder graph (ONNX Runtime, CPU, 1 thread): per step ``ratio`` (the largest
    ``|approx - fp32 logit| / bound``; it must stay <= 1), ``candidates`` and ``agrees`` (the head's
    choice is the masked fp32 logits' argmax).  The exporter checks the bound with it on the CPU that
    builds the artefact; ``bench/bounded_head.py`` reports it."""
    import json

    import onnx
    import onnxruntime as ort
    from onnx import helper

    from testbed.engines.onnxruntime.contract import DECODER, HEAD_PREFIX, LOGITS, META, NEXT_IDS, NO_EOS, PAST, PRESENT

    p = HEAD_PREFIX + "bounded/"
    meta = json.loads((art / META).read_text())
    graph = onnx.load(str(art / DECODER))
    extra = [p + "approx", p + "err", p + "cand", HEAD_PREFIX + "masked"]
    graph.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in extra)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(graph.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    presents = [n for n in names if n.startswith(PRESENT)]
    eos = set(meta["eos_token_ids"])
    out: list[dict[str, Any]] = []
    for ids in prompts:
        step = np.array([ids], dtype=np.int64)
        past = {PAST + n.removeprefix(PRESENT): np.zeros((1, meta["kv_heads"], 0, meta["head_dim"]), np.float32)
                for n in presents}
        t = 0
        for _ in range(steps):
            feed = {"input_ids": step, "attention_mask": np.ones((1, t + step.shape[1]), np.int64),
                    "position_ids": np.arange(t, t + step.shape[1], dtype=np.int64)[None],
                    NO_EOS: np.zeros(1, bool), **past}
            r = dict(zip(names, s.run(None, feed)))
            err, off = r[p + "err"], np.abs(r[p + "approx"] - r[LOGITS])
            ratio = np.divide(off, err, out=np.where(off > 0, np.inf, 0.0).astype(np.float32), where=err > 0)
            masked = np.where(r[HEAD_PREFIX + "masked"], -np.inf, r[LOGITS])
            out.append({"ratio": float(ratio.max()), "candidates": int(r[p + "cand"].sum()),
                        "agrees": bool(r[NEXT_IDS][0] == masked[0].argmax())})
            t += step.shape[1]
            past = {PAST + n.removeprefix(PRESENT): r[n] for n in presents}
            step = r[NEXT_IDS].reshape(1, 1)
            if int(step[0, 0]) in eos:
                break
    return out
