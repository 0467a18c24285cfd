"""The ONNX Runtime engine's :class:`~testbed.engines.step.StepBatch`: the exported graphs over padded rows.

State of the running rows (numpy arrays on the CPU path; OrtValues where IO binding keeps them on
the device, brought to the host only when rows join or leave):

* ``past`` (B, H, T, D) per layer: the self-attention cache, left-padded for rows that joined later;
* seq2seq: ``self_bias`` (B, 1, 1, T) (0 for a real position, ``MASK_VALUE`` for padding),
  ``pos`` (B, 1) each row's own position, and ``fixed``: ``encoder_bias`` (B, 1, 1, S) and the
  cross-attention keys/values, right-padded to the longest source;
* decoder-only: ``mask`` (B, T) and ``pos`` (B, 1), as the graph takes them;
* ``inp`` (B, 1): each row's last token.

The graphs take per-row positions and masks (see :mod:`testbed.export.wrappers`), so a row decodes
as it would alone whatever the others are doing.  New rows are prefilled on their own (seq2seq:
the encoder in :meth:`OrtBatch._admit`, the first decoder step in :meth:`OrtBatch._prefill`;
decoder-only: the prompt), then padded and concatenated to the running rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from testbed.engines.onnxruntime.contract import MASK_VALUE, NO_EOS
from testbed.engines.onnxruntime.loop import IDS as LOOP_IDS
from testbed.engines.onnxruntime.runner import pad_batch
from testbed.engines.step import PaddedBatch, pad_left, pad_right

if TYPE_CHECKING:
    from testbed.engines.base import Prepared
    from testbed.engines.onnxruntime.engine import OnnxRuntimeEngine


class OrtBatch(PaddedBatch):
    compact_at = 0.25  # rows that left are dropped from the tensors once they are this share of the batch

    def __init__(self, engine: OnnxRuntimeEngine) -> None:
        super().__init__(engine.ort.seq2seq)
        self.e = engine
        self.m = engine.ort
        self.banned = list(engine.banned)
        self.eos = sorted(engine.eos_token_ids)
        self.use_head = self.m.head_fits(self.banned, self.eos)
        self.use_loop = self.m.loop_fits(self.banned, self.eos)
        # one banned id: a basic index (a list index costs a conversion every step)
        self.banned_idx: Any = self.banned[0] if len(self.banned) == 1 else np.asarray(self.banned, dtype=np.intp)
        self.min_new = False  # does any row admitted so far have a minimum length (then EOS is masked per row)
        self.eos_set = set(self.eos)
        self.eos_ids = np.array(self.eos, dtype=np.int64)
        self.new_fixed: dict[str, Any] | None = None
        self.past: list[Any] = []
        self.fixed: dict[str, Any] = {}
        self.bias: Any = None  # seq2seq self_bias (B,1,1,T)
        # padded positions in bias and encoder_bias (and its width; seq2seq) or in mask (decoder-only):
        # a step adds a real column, so they change only when rows join or the tensors are compacted
        # (None: recount); counting them every step cost about a tenth of an int8 step
        self.pads: tuple[int, int, int] | None = None
        self.mask: Any = None  # decoder-only attention mask (B,T)
        self.pos: Any = None
        self.inp: Any = None

    # ------------------------------------------------------------------ helpers
    def _host(self, v: Any) -> np.ndarray:
        return v.numpy() if hasattr(v, "numpy") else v

    def _dev(self, a: np.ndarray) -> Any:
        return self.m._ov(np.ascontiguousarray(a)) if self.m.io_binding else a

    def _run(self, fixed: dict[str, Any], inputs: dict[str, Any], past: list[Any],
             slots: list[int | None] | list[int]) -> tuple[np.ndarray, list[Any]]:
        """One decoder step and its greedy choice: inside the graph (its head masks the banned ids, and
        EOS in the rows ``no_eos``), or over the logits when the graph's head masks other ids."""
        rows = self.no_eos(slots) if self.eos and self.min_new else []
        if self.use_head:
            flags = np.zeros(len(slots), dtype=bool)
            flags[rows] = True
            nxt, _, past = self.m._step(fixed, {**inputs, NO_EOS: flags}, past)
            assert nxt is not None
            return nxt, past
        _, logits, past = self.m._step(fixed, inputs, past, logits=True)
        assert logits is not None
        if self.banned:
            logits[:, self.banned_idx] = -np.inf
        if rows:
            logits[np.ix_(rows, self.eos)] = -np.inf
        return logits.argmax(-1), past  # int64 (np.intp on the 64-bit platforms ONNX Runtime ships for)

    # ------------------------------------------------------------------ admission
    def _admit(self, rows: dict[int, Prepared]) -> None:
        self.min_new = self.min_new or any(p.min_new_tokens > 0 for p in rows.values())
        if not self.seq2seq:  # a new prefill group: it advances beside any group already in progress
            ids, mask = pad_batch([self.prepared[s].input_ids for s in rows], self.e.pad_id, left=True)
            self.pfs.append({"slots": list(rows), "ids": ids, "mask": mask, "c": 0,
                             "pos": np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64),
                             "past": self.m._empty_past(len(rows))})
            return
        if self.waiting:
            raise RuntimeError("admit() called again before prefill()")
        if not rows:
            return

        def encode(slots: list[int]) -> tuple[dict[str, Any], np.ndarray]:
            ids, mask = pad_batch([self.prepared[s].input_ids for s in slots], self.e.pad_id, left=False)
            return self.m._encode(ids, mask), mask

        # the encoder over groups of similar length, its outputs right-padded to the longest source
        outs = self._encode_groups(list(rows), encode)
        self.new_fixed = outs[0] if len(outs) == 1 else self._merge_fixed(outs)

    def _prefill(self) -> dict[int, int]:
        if not self.seq2seq:
            return self._prefill_chunk(None)
        slots, self.waiting = self.waiting, []
        n = len(slots)
        m = self.m
        assert self.new_fixed is not None
        fixed, self.new_fixed = self.new_fixed, None
        # the decoder prefix (start token, then a forced target-language BOS), one token per step
        past = m._empty_past(n)
        for k, tok in enumerate(self.e.prefix):
            inp = np.full((n, 1), tok, dtype=np.int64)
            pos = np.full((n, 1), k, dtype=np.int64)
            bias = np.zeros((n, 1, 1, k + 1), dtype=m.bias_dtype)
            nxt, past = self._run(fixed, {"input_ids": inp, "position_ids": pos, "self_bias": bias}, past, slots)
        self._join(slots, past, nxt.reshape(n, 1), pos + 1, bias=bias, fixed=fixed)
        return dict(zip(slots, nxt.tolist()))

    def _prefill_chunk(self, budget: int | None) -> dict[int, int]:
        """Decoder-only: every prefill group (its prompts left-padded together) advances by one chunk of
        ``budget / groups / rows`` columns (all of them without a budget); a group's first tokens come
        with its last chunk, so a short prompt admitted beside a long one is not held up by it."""
        out: dict[int, int] = {}
        groups = list(self.pfs)
        for g in groups:
            slots, ids, mask, c = g["slots"], g["ids"], g["mask"], g["c"]
            width = ids.shape[1]
            share = None if budget is None else max(1, budget // len(groups))
            k = width - c if share is None else min(width - c, max(1, share // len(slots)))
            nxt, g["past"] = self._run({}, {"input_ids": np.ascontiguousarray(ids[:, c : c + k]),
                                            "attention_mask": np.ascontiguousarray(mask[:, : c + k]),
                                            "position_ids": np.ascontiguousarray(g["pos"][:, c : c + k])},
                                       g["past"], slots)
            chunk = mask[:, c : c + k]
            self.padding.add(chunk.size, int((chunk == 0).sum()))
            g["c"] = c + k
            if g["c"] < width:
                continue
            self.pfs.remove(g)
            self._join(slots, g["past"], nxt.reshape(len(slots), 1), g["pos"][:, -1:] + 1, mask=mask)
            out.update(zip(slots, nxt.tolist()))
        return out

    def _join(self, slots: list[int], past: list[Any], inp: np.ndarray, pos: np.ndarray, *, bias: Any = None,
              mask: Any = None, fixed: dict[str, Any] | None = None) -> None:
        if not self.has_running():
            self.order, self.past, self.inp, self.pos = list(slots), past, inp, pos
            self.bias, self.mask, self.fixed = bias, mask, fixed or {}
            self.pads = None
            return
        self._compact()
        t = max(self._host(self.past[0]).shape[2], self._host(past[0]).shape[2])
        self.past = [self._dev(np.concatenate([pad_left(self._host(a), t, 2), pad_left(self._host(b), t, 2)]))
                     for a, b in zip(self.past, past)]
        if self.seq2seq:
            assert fixed is not None
            self.bias = np.concatenate([pad_left(self.bias, t, 3, MASK_VALUE), pad_left(bias, t, 3, MASK_VALUE)])
            self.fixed = self._merge_fixed([self.fixed, fixed])
        else:
            self.mask = np.concatenate([pad_left(self.mask, t, 1), pad_left(mask, t, 1)])
        self.inp = np.concatenate([self.inp, inp])
        self.pos = np.concatenate([self.pos, pos])
        self.order += slots
        self.pads = None

    def _merge_fixed(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """The encoder outputs of several groups of rows as one batch: each right-padded to the longest
        source (``encoder_bias`` with the mask value, the cross-attention keys/values with 0)."""
        s = max(self._host(p["encoder_bias"]).shape[3] for p in parts)
        merged = {}
        for name in parts[0]:
            axis = 3 if name == "encoder_bias" or name.startswith("cross_k") else 2
            value = MASK_VALUE if name == "encoder_bias" else 0.0
            merged[name] = self._dev(np.concatenate([pad_right(self._host(p[name]), s, axis, value) for p in parts]))
        return merged

    # ------------------------------------------------------------------ steps
    def _step(self) -> dict[int, int]:
        nxt = self._advance()
        return {s: t for s, t in zip(self.order, nxt.tolist()) if s is not None}

    def _advance(self) -> np.ndarray:
        """One decoding step of every row in the tensors (rows that left included): their next ids."""
        n = len(self.order)
        if self.seq2seq:
            if self.pads is not None and self.pads[0] == 0:  # no padded position: all zeros, one allocation
                self.bias = np.zeros((n, 1, 1, self.bias.shape[3] + 1), dtype=self.bias.dtype)
            else:
                self.bias = np.concatenate([self.bias, np.zeros((n, 1, 1, 1), dtype=self.bias.dtype)], axis=3)
            nxt, self.past = self._run(self.fixed, {"input_ids": self.inp, "position_ids": self.pos,
                                                    "self_bias": self.bias}, self.past, self.order)
            self._count_seq2seq_padding(n, self._zombies(), self.bias.shape[3])
        else:
            self.mask = np.concatenate([self.mask, np.ones((n, 1), dtype=self.mask.dtype)], axis=1)
            nxt, self.past = self._run({}, {"input_ids": self.inp, "attention_mask": self.mask,
                                            "position_ids": self.pos}, self.past, self.order)
            if self.pads is None:
                self.pads = (self.mask.size - int(np.count_nonzero(self.mask)), 0, 0)
            t = self.mask.shape[1]
            self.padding.add(n * t, self.pads[0] + self._zombies() * t)
        self.inp = nxt.reshape(n, 1)
        self.pos = self.pos + 1
        return nxt

    def _count_seq2seq_padding(self, n: int, zombies: int, t: int) -> None:
        """A seq2seq step over ``n`` rows (``zombies`` of them left) attending to ``t`` self positions and the
        sources: the positions computed, and the padded ones (counted once per join or compaction)."""
        if self.pads is None:
            eb = self._host(self.fixed["encoder_bias"])
            self.pads = (int(np.count_nonzero(self.bias)), int(np.count_nonzero(eb)), eb.shape[3])
        width = t + self.pads[2]
        self.padding.add(n * width, self.pads[0] + self.pads[1] + zombies * width)

    def _steps(self) -> dict[int, list[int]]:
        """Several steps for a driver that takes no timestamp per token (:meth:`Engine.generate`): in one
        ONNX Runtime call where the greedy loop applies (:meth:`_loop_steps`), else in one Python loop
        until a row finishes (:meth:`_host_steps`); one step while rows wait for their prefill, and where
        a row's EOS is masked until its minimum length (the mask follows the count the driver keeps)."""
        if self.has_pending():
            return super()._steps()
        if self.seq2seq and self.use_loop:
            return self._loop_steps()
        return super()._steps() if self.min_new else self._host_steps()

    def _host_steps(self) -> dict[int, list[int]]:
        """Steps of the running rows until one finishes (an EOS id, or its ``max_new_tokens``): each row's
        tokens.  The same steps as :meth:`step` called in turn, without the per-step dictionaries (a
        small int8 model's step is a tenth of a millisecond; this saves a few microseconds of it)."""
        live = [(i, s) for i, s in enumerate(self.order) if s is not None]
        left = {s: self.prepared[s].max_new_tokens - self.generated[s] for _, s in live}
        out: dict[int, list[int]] = {s: [] for _, s in live}
        eos = self.eos_set
        while True:
            ids = self._advance().tolist()
            done = False
            for i, s in live:
                toks = out[s]
                toks.append(ids[i])
                done = done or ids[i] in eos or len(toks) >= left[s]
            if done:
                return out

    def _loop_steps(self) -> dict[int, list[int]]:
        """Several steps in one ONNX Runtime call (the greedy loop, :mod:`.loop`), until enough rows have
        finished that :meth:`_evict` will compact the tensors (one row at batch 1), or until every row's
        budget is spent."""
        m, n, order = self.m, len(self.order), self.order
        assert m.loop is not None
        live = [i for i, s in enumerate(order) if s is not None]
        gen = np.array([self.generated[s] if s is not None else 0 for s in order], dtype=np.int64)
        max_new = np.array([self.prepared[s].max_new_tokens if s is not None else 1 for s in order], dtype=np.int64)
        min_new = np.array([self.prepared[s].min_new_tokens if s is not None else 0 for s in order], dtype=np.int64)
        z = n - len(live)
        stop_after = min(len(live), max(1, int(self.compact_at * n) - z + 1))
        feed = {"max_steps": np.array(int((max_new - gen)[live].max()), dtype=np.int64),
                "stop_after": np.array(stop_after, dtype=np.int64), "eos_ids": self.eos_ids,
                "min_new": min_new, "max_new": max_new, "init/input_ids": self.inp, "init/position_ids": self.pos,
                "init/self_bias": self.bias, "init/done": np.array([s is None for s in order]), "init/count": gen,
                **{"init/" + k: v for k, v in zip(m.past_names, self.past)}, **self.fixed}
        got = dict(zip(m.loop_outputs, m.loop.run(m.loop_outputs, feed)))
        ids = got[LOOP_IDS]  # (steps, B)
        t0 = self.bias.shape[3]
        self.inp, self.pos, self.bias = got["final/input_ids"], got["final/position_ids"], got["final/self_bias"]
        self.past = [got["final/" + k] for k in m.past_names]
        out: dict[int, list[int]] = {}
        ends = []  # the step at which each live row finished (len(ids): still running)
        for i in live:
            col = ids[:, i].tolist()
            s, left = order[i], int(max_new[i] - gen[i])
            end = next((j for j, t in enumerate(col) if t in self.eos_set or j + 1 >= left), None)
            out[s] = col if end is None else col[: end + 1]  # type: ignore[index]
            ends.append(len(col) if end is None else end)
        for j in range(ids.shape[0]):  # padding as the steps one by one would have counted it
            zj, t = z + sum(e < j for e in ends), t0 + j + 1
            self._count_seq2seq_padding(n, zj, t)
        return out

    # ------------------------------------------------------------------ leaving
    def _evict(self, slots: list[int]) -> None:
        gone = set(slots)
        for g in list(self.pfs):  # rows whose prefill is in progress: their prefill stops
            keep = [i for i, s in enumerate(g["slots"]) if s not in gone]
            if len(keep) == len(g["slots"]):
                continue
            if not keep:
                self.pfs.remove(g)
                continue
            for name in ("ids", "mask", "pos"):
                g[name] = g[name][keep]
            g["past"] = [self._dev(np.ascontiguousarray(self._host(p)[keep])) for p in g["past"]]
            g["slots"] = [g["slots"][i] for i in keep]
        self.waiting = [s for s in self.waiting if s not in gone]
        if not self.waiting:
            self.new_fixed = None
        if not gone.intersection(self.order):
            return
        self.order = [None if s in gone else s for s in self.order]
        if not self.has_running():
            self.order, self.past, self.fixed = [], [], {}
            self.bias = self.mask = self.pos = self.inp = None
        elif self._zombies() > self.compact_at * len(self.order):
            self._compact()

    def _compact(self) -> None:
        """Drop the rows that left from every tensor, and the padding every remaining row has."""
        keep = [i for i, s in enumerate(self.order) if s is not None]
        if len(keep) == len(self.order):
            return
        self.order = [self.order[i] for i in keep]
        self.pads = None
        idx = np.asarray(keep)
        real = (self.bias[idx, 0, 0, :] == 0) if self.seq2seq else (self.mask[idx] != 0)
        lead = int(np.argmax(real.any(0))) if real.any() else 0  # leading columns every remaining row pads
        self.past = [self._dev(np.ascontiguousarray(self._host(p)[idx][:, :, lead:])) for p in self.past]
        self.inp, self.pos = self.inp[idx], self.pos[idx]
        if self.seq2seq:
            self.bias = np.ascontiguousarray(self.bias[idx][..., lead:])
            eb = self._host(self.fixed["encoder_bias"])[idx]
            s = int((eb[:, 0, 0, :] == 0).sum(1).max())  # sources are right-padded
            fixed = {}
            for name, v in self.fixed.items():
                a = self._host(v)[idx]
                a = a[..., :s] if name == "encoder_bias" or name.startswith("cross_k") else a[:, :, :s]
                fixed[name] = self._dev(np.ascontiguousarray(a))
            self.fixed = fixed
        else:
            self.mask = np.ascontiguousarray(self.mask[idx][:, lead:])
