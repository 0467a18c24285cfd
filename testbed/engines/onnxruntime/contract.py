"""What an ONNX artefact's graphs and the runner agree on: file names, tensor names, the mask value.

The one place both sides read these from.  The producer is the exporter (:mod:`testbed.export`:
:mod:`~testbed.export.wrappers` and :mod:`~testbed.export.seq2seq_graphs` build the graphs,
:mod:`~testbed.export.greedy_head` adds the greedy choice, :mod:`~testbed.export.onnx_export`
writes the artefact); the consumer is this engine's :mod:`~testbed.engines.onnxruntime.runner`
and :mod:`~testbed.engines.onnxruntime.batch`.  It sits on the engine's side because the
exporter may depend on the engine (it validates its graphs with the runner) and never the other
way round.  Constants only: importing it imports nothing (no onnx, no onnxruntime).

A change here changes the graphs: bump the exporter's ``GRAPH_VERSION`` (or the greedy head's
``VERSION``) with it, so cached artefacts rebuild.

The other input names (``input_ids``, ``attention_mask``, ``position_ids``, ``self_bias``,
``encoder_bias``) and every shape are described in :mod:`testbed.export.wrappers`.  Besides the
names below, the runner reads from :data:`META`: ``architecture`` (``seq2seq`` or
``causal``), ``num_layers``, ``kv_heads``, ``head_dim``, ``decoder_start_token_id`` (seq2seq) and
``greedy_head`` (``banned`` and ``eos``: the ids the head masks; ``bounded``: its ``next_ids`` do
not read ``logits`` (:mod:`testbed.export.lossless`); absent if the graph has none).
"""

from __future__ import annotations

# files of an artefact directory
META = "onnx_config.json"  # the decoding metadata the runner reads
ENCODER = "encoder.onnx"  # seq2seq only
DECODER = "decoder.onnx"

# the graphs' additive attention mask: exp() underflows to 0 in fp32, still representable in fp16
MASK_VALUE = -1.0e4

# the decoder graph: cache tensors present_<k|v>.<layer> out, past_<k|v>.<layer> in (the next step's
# past is this step's present), cross_<k|v>.<layer> from the encoder (seq2seq)
PAST = "past_"
PRESENT = "present_"
CROSS = "cross_"
LOGITS = "logits"  # (B, V): the last position's scores, the decoder's first output before the head

# the greedy head (testbed.export.greedy_head): every node and initializer it adds is named under
# HEAD_PREFIX; it adds the input NO_EOS (bool (B,): rows that may not end at this step) and the
# output NEXT_IDS (int64 (B,)), the chosen ids
HEAD_PREFIX = "greedy_head/"
NO_EOS = "no_eos"
NEXT_IDS = "next_ids"
