"""The torch engine's :class:`~testbed.engines.step.StepBatch`: padded tensors, rows joining and leaving.

State of the running rows (``B`` rows in :attr:`TorchBatch.order`, ``T`` cached positions):

* the Hugging Face cache (``DynamicCache``; ``EncoderDecoderCache`` for seq2seq, whose cross-
  attention keys/values are computed by each row's first decoder step and kept);
* ``mask`` (B, T): which cached positions are real (rows that joined later are left-padded);
* ``pos`` (B, 1): each row's own next position, so a row decodes as if it were alone;
* ``inp`` (B, 1): each row's last token; seq2seq: ``enc`` (B, S, d) and ``enc_mask`` (B, S),
  right-padded to the longest source.

New rows are prefilled on their own (seq2seq: the encoder in :meth:`_admit`, then the first
decoder step; decoder-only: the prompt), then their tensors are padded to the running rows' and
concatenated.  Evicted rows are dropped with one ``index_select`` per tensor, and positions that
every remaining row pads are trimmed.  Seq2seq models with absolute position embeddings get each
row's position through a forward hook on the decoder's position module (Hugging Face derives one
position for the whole batch from the cache length); relative-position models need none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from testbed.engines.step import PaddedBatch, pad_left, pad_right

if TYPE_CHECKING:
    from testbed.engines.base import Prepared
    from testbed.engines.torch.engine import TorchEngine


def cache_layers(cache: Any) -> list[Any]:
    """Every key/value layer object of a Hugging Face cache (self-attention first, then cross)."""
    from transformers import EncoderDecoderCache

    if isinstance(cache, EncoderDecoderCache):
        return list(cache.self_attention_cache.layers) + list(cache.cross_attention_cache.layers)
    return list(cache.layers)


def self_layers(cache: Any) -> list[Any]:
    from transformers import EncoderDecoderCache

    return list(cache.self_attention_cache.layers if isinstance(cache, EncoderDecoderCache) else cache.layers)


def cross_layers(cache: Any) -> list[Any]:
    from transformers import EncoderDecoderCache

    return list(cache.cross_attention_cache.layers) if isinstance(cache, EncoderDecoderCache) else []


class TorchBatch(PaddedBatch):
    def __init__(self, engine: TorchEngine) -> None:
        super().__init__(engine.seq2seq)
        self.e = engine
        self.torch = engine._torch
        self.new_enc: Any = None  # seq2seq: encoder outputs and mask of the waiting rows
        self.new_enc_mask: Any = None
        self.cache: Any = None
        self.mask: Any = None
        self.pos: Any = None
        self.inp: Any = None
        self.enc: Any = None
        self.enc_mask: Any = None

    # ------------------------------------------------------------------ admission
    def _admit(self, rows: dict[int, Prepared]) -> None:
        if not self.seq2seq:  # a new prefill group: it advances beside any group already in progress
            from transformers import DynamicCache

            ids, mask = self.e._pad([self.prepared[s] for s in rows])
            self.pfs.append({"slots": list(rows), "ids": ids, "mask": mask, "cache": DynamicCache(), "c": 0,
                             "pos": (mask.cumsum(-1) - 1).clamp(min=0)})
            return
        if self.waiting:  # rows admitted twice before a prefill: prefill the earlier ones first
            raise RuntimeError("admit() called again before prefill()")
        if not rows:
            return

        def encode(slots: list[int]) -> tuple[tuple[Any, Any], Any]:
            ids, mask = self.e._pad([self.prepared[s] for s in slots])
            with self.torch.inference_mode():
                return (self.e.model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state, mask), mask

        # the encoder over groups of similar length, its states right-padded to the longest source
        parts = self._encode_groups(list(rows), encode)
        width = max(m.shape[1] for _, m in parts)
        self.new_enc = self.torch.cat([pad_right(h, width, 1) for h, _ in parts])
        self.new_enc_mask = self.torch.cat([pad_right(m, width, 1) for _, m in parts])
        self.e._sync()

    def _prefill(self) -> dict[int, int]:
        if not self.seq2seq:
            return self._prefill_chunk(None)
        torch = self.torch
        slots, self.waiting = self.waiting, []
        n = len(slots)
        with torch.inference_mode():
            from transformers import DynamicCache, EncoderDecoderCache

            cache: Any = EncoderDecoderCache(DynamicCache(), DynamicCache())
            # the decoder prefix: the start token, then a forced target-language BOS if any
            k = len(self.e.prefix)
            inp = torch.tensor([self.e.prefix] * n, dtype=torch.long, device=self.e.device)
            mask = torch.ones((n, k), dtype=torch.long, device=self.e.device)
            pos = torch.arange(k, device=self.e.device).unsqueeze(0).expand(n, k)
            logits = self._forward_seq2seq(inp, mask, pos, cache, self.new_enc, self.new_enc_mask)
            pos = pos[:, -1:]
            enc, enc_mask = self.new_enc, self.new_enc_mask
            self.new_enc = self.new_enc_mask = None
            nxt = self.e._pick(logits, self.no_eos(slots))
            self._join(slots, cache, mask, pos + 1, nxt.view(n, 1), enc, enc_mask)
        return dict(zip(slots, nxt.tolist()))

    def _prefill_chunk(self, budget: int | None) -> dict[int, int]:
        """Decoder-only: every prefill group (its prompts left-padded together) advances by one chunk of
        ``budget / groups / rows`` columns (all of them without a budget); a group's first tokens come
        with its last chunk, so a short prompt admitted beside a long one is not held up by it."""
        out: dict[int, int] = {}
        groups = list(self.pfs)
        with self.torch.inference_mode():
            for g in groups:
                slots, ids, mask, c = g["slots"], g["ids"], g["mask"], g["c"]
                width = ids.shape[1]
                share = None if budget is None else max(1, budget // len(groups))
                k = width - c if share is None else min(width - c, max(1, share // len(slots)))
                logits = self._forward_causal(ids[:, c : c + k], mask[:, : c + k], g["pos"][:, c : c + k], g["cache"])
                chunk = mask[:, c : c + k]
                self.padding.add(chunk.numel(), int((chunk == 0).sum()))
                g["c"] = c + k
                if g["c"] < width:
                    continue
                self.pfs.remove(g)
                nxt = self.e._pick(logits, self.no_eos(slots))
                self._join(slots, g["cache"], mask, g["pos"][:, -1:] + 1, nxt.view(len(slots), 1), None, None)
                out.update(zip(slots, nxt.tolist()))
        return out

    def _join(self, slots: list[int], cache: Any, mask: Any, pos: Any, inp: Any, enc: Any, enc_mask: Any) -> None:
        """Append rows (their own cache and tensors) to the running ones, padding either side."""
        torch = self.torch
        if not self.has_running():
            self.order, self.cache, self.mask, self.pos, self.inp = list(slots), cache, mask, pos, inp
            self.enc, self.enc_mask = enc, enc_mask
            return
        self._compact()
        t = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self_layers(self.cache), self_layers(cache)):
            old.keys = torch.cat([pad_left(old.keys, t, 2), pad_left(new.keys, t, 2)], dim=0)
            old.values = torch.cat([pad_left(old.values, t, 2), pad_left(new.values, t, 2)], dim=0)
        self.mask = torch.cat([pad_left(self.mask, t, 1), pad_left(mask, t, 1)], dim=0)
        if self.seq2seq:
            s = max(self.enc.shape[1], enc.shape[1])
            for old, new in zip(cross_layers(self.cache), cross_layers(cache)):
                old.keys = torch.cat([pad_right(old.keys, s, 2), pad_right(new.keys, s, 2)], dim=0)
                old.values = torch.cat([pad_right(old.values, s, 2), pad_right(new.values, s, 2)], dim=0)
            self.enc = torch.cat([pad_right(self.enc, s, 1), pad_right(enc, s, 1)], dim=0)
            self.enc_mask = torch.cat([pad_right(self.enc_mask, s, 1), pad_right(enc_mask, s, 1)], dim=0)
        self.pos = torch.cat([self.pos, pos], dim=0)
        self.inp = torch.cat([self.inp, inp], dim=0)
        self.order += slots

    # ------------------------------------------------------------------ steps
    def _forward_seq2seq(self, inp: Any, mask: Any, pos: Any, cache: Any, enc: Any, enc_mask: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutput

        self.e._positions = pos
        try:
            out = self.e.model(encoder_outputs=BaseModelOutput(last_hidden_state=enc), attention_mask=enc_mask,
                               decoder_input_ids=inp, decoder_attention_mask=mask,
                               **{self.e._cache_kw: cache}, use_cache=True)
        finally:
            self.e._positions = None
        return out.logits[:, -1, :].float()

    def _forward_causal(self, ids: Any, mask: Any, pos: Any, cache: Any) -> Any:
        out = self.e.model(input_ids=ids, attention_mask=mask, position_ids=pos, **{self.e._cache_kw: cache},
                           use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    def _step(self) -> dict[int, int]:
        torch = self.torch
        n = len(self.order)
        with torch.inference_mode():
            mask = torch.cat([self.mask, torch.ones((n, 1), dtype=self.mask.dtype, device=self.mask.device)], dim=1)
            z = self._zombies()
            if self.seq2seq:
                logits = self._forward_seq2seq(self.inp, mask, self.pos, self.cache, self.enc, self.enc_mask)
                em = self.enc_mask
                self.padding.add(em.numel(), int((em == 0).sum()) + z * em.shape[1])
            else:
                logits = self._forward_causal(self.inp, mask, self.pos, self.cache)
            self.padding.add(mask.numel(), int((mask == 0).sum()) + z * mask.shape[1])
            nxt = self.e._pick(logits, self.no_eos(self.order))
        self.mask = mask
        self.pos = self.pos + 1
        self.inp = nxt.view(n, 1)
        return {s: t for s, t in zip(self.order, nxt.tolist()) if s is not None}

    # ------------------------------------------------------------------ leaving
    def _evict_pending(self, gone: set[int]) -> None:
        """Drop rows from the prefills in progress (a client that went away stops its prefill)."""
        for g in list(self.pfs):
            keep = [i for i, s in enumerate(g["slots"]) if s not in gone]
            if len(keep) == len(g["slots"]):
                continue
            if not keep:
                self.pfs.remove(g)
                continue
            idx = self.torch.tensor(keep, dtype=self.torch.long, device=g["ids"].device)
            for layer in self_layers(g["cache"]):
                if layer.keys is not None and layer.keys.numel():
                    layer.keys = layer.keys.index_select(0, idx)
                    layer.values = layer.values.index_select(0, idx)
            for name in ("ids", "mask", "pos"):
                g[name] = g[name].index_select(0, idx)
            g["slots"] = [g["slots"][i] for i in keep]

    def _evict(self, slots: list[int]) -> None:
        gone = set(slots)
        self._evict_pending(gone)
        self.waiting = [s for s in self.waiting if s not in gone]
        if not self.waiting:
            self.new_enc = self.new_enc_mask = None
        if not gone.intersection(self.order):
            return
        self.order = [None if s in gone else s for s in self.order]
        if not self.has_running():
            self.order = []
            self.cache = self.mask = self.pos = self.inp = self.enc = self.enc_mask = None
        elif 2 * self._zombies() > len(self.order):
            self._compact()

    def _compact(self) -> None:
        """Drop the rows that left from every tensor, and the padding every remaining row has."""
        torch = self.torch
        keep = [i for i, s in enumerate(self.order) if s is not None]
        if len(keep) == len(self.order):
            return
        self.order = [self.order[i] for i in keep]
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        lead = int((self.mask.index_select(0, idx).sum(0) == 0).long().cumprod(0).sum())  # columns all rows pad
        for layer in self_layers(self.cache):
            layer.keys = layer.keys.index_select(0, idx)[:, :, lead:]
            layer.values = layer.values.index_select(0, idx)[:, :, lead:]
        self.mask = self.mask.index_select(0, idx)[:, lead:]
        self.pos = self.pos.index_select(0, idx)
        self.inp = self.inp.index_select(0, idx)
        if self.seq2seq:
            em = self.enc_mask.index_select(0, idx)
            s = int(em.sum(1).max())  # right padding every remaining row has
            for layer in cross_layers(self.cache):
                layer.keys = layer.keys.index_select(0, idx)[:, :, :s]
                layer.values = layer.values.index_select(0, idx)[:, :, :s]
            self.enc = self.enc.index_select(0, idx)[:, :s]
            self.enc_mask = em[:, :s]
