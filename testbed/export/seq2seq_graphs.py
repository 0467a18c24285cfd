"""ONNX graphs of the seq2seq families besides Marian: T5, BART / mBART, M2M100 / NLLB, BlenderBot
and BlenderBot-small.

Every family exports the same two graphs as Marian (:mod:`testbed.export.wrappers`, whose module
docstring defines the interface): ``encoder`` (input_ids, attention_mask -> encoder_bias,
cross_k.i (B,H,D,S), cross_v.i (B,H,S,D)) and a one-token ``decoder`` step (input_ids,
position_ids, self_bias, encoder_bias, past_*, cross_* -> logits, present_*).  The runner and
continuous batching (:class:`testbed.engines.onnxruntime.batch.OrtBatch`) therefore serve them
unchanged.  Attention, head split and projection helpers are the ones of
:mod:`testbed.export.wrappers`; the model's own sub-modules (projections, layer norms,
activations, embeddings) carry the weights, so the exported numbers are the model's.

What differs between the families (``position_ids`` is the row's decoder step, 0 at the decoder
start token):

* **BART-like** (:class:`BartLikeEncoderGraph`, :class:`BartLikeDecoderGraph`), one
  :class:`Layout` per ``model_type``: token embeddings times ``embed_scale``; positions from a
  learned table read at ``position + 2`` (BART, mBART) or ``position`` (BlenderBot,
  BlenderBot-small), or M2M100's sinusoidal table read at ``position + padding_idx + 1`` (a
  ``<pad>`` token gets the table's zero row at ``padding_idx``, as Hugging Face computes it from
  the ids); ``layernorm_embedding`` after the positions are added (BART, mBART, BlenderBot-small's
  encoder) or on the token embeddings before them (BlenderBot-small's decoder); pre-norm layers
  with a final layer norm (mBART, M2M100, BlenderBot) or post-norm layers (BART,
  BlenderBot-small); ``final_logits_bias`` where the model has one.
* **T5** (:class:`T5EncoderGraph`, :class:`T5DecoderGraph`): RMS layer norms, pre-norm, no
  attention scaling (folded into the weights at training), a relative position bias computed in
  the graph by the model's own bucketing (bidirectional in the encoder, causal in the decoder;
  cross-attention has none), a gated-GELU feed-forward for T5 v1.1 / flan-t5 configs, and the
  ``d_model ** -0.5`` rescale of the decoder output for checkpoints whose head is the tied
  embedding (``config.scale_decoder_outputs``).  In the decoder step, cache column ``j`` of a row
  holds position ``position_ids - T + j``: a row's cache is contiguous at its right end (rows
  that joined later are left-padded, and the padding is masked by ``self_bias``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from testbed.engines.onnxruntime.contract import MASK_VALUE
from testbed.export.wrappers import (
    _attend,
    _fused,
    _lin,
    _merge_heads,
    _self_attention_step,
    _split_heads,
    _step_attention,
    _untied_head,
)


def cache_dims(config: Any) -> tuple[int, int, int]:
    """(decoder layers, heads, head size) of a seq2seq config: the shapes of the KV cache."""
    if config.model_type == "t5":
        return int(config.num_decoder_layers), int(config.num_heads), int(config.d_kv)
    heads = int(config.decoder_attention_heads)
    return int(config.decoder_layers), heads, int(config.d_model) // heads


def _encoder_bias(attention_mask: torch.Tensor) -> torch.Tensor:
    b, s = attention_mask.shape
    return (1.0 - attention_mask.to(torch.float32)).view(b, 1, 1, s) * MASK_VALUE


def _cross_kv(x: torch.Tensor, projections: list[tuple[Any, Any]], heads: int, dim: int) -> list[torch.Tensor]:
    """Every decoder layer's cross-attention keys (transposed, (B,H,D,S)) and values (B,H,S,D)."""
    outs: list[torch.Tensor] = []
    for k, v in projections:
        outs.append(_split_heads(k(x), heads, dim).transpose(2, 3))
        outs.append(_split_heads(v(x), heads, dim))
    return outs


# --------------------------------------------------------------------------- BART-like
@dataclass(frozen=True)
class Layout:
    pre_norm: bool  # layer norm before each sub-layer, and a final layer norm on the stack's output
    position_offset: int = 0  # learned positions: table row of position p is p + offset
    sinusoidal: bool = False  # M2M100's table, read at p + padding_idx + 1 (pad tokens at padding_idx)
    embed_norm: str | None = None  # "after_positions" | "before_positions" (decoder) | None
    encoder_embed_norm: str | None = None  # defaults to embed_norm


LAYOUTS: dict[str, Layout] = {
    "bart": Layout(pre_norm=False, position_offset=2, embed_norm="after_positions"),
    "mbart": Layout(pre_norm=True, position_offset=2, embed_norm="after_positions"),
    "m2m_100": Layout(pre_norm=True, sinusoidal=True),
    "blenderbot": Layout(pre_norm=True),
    "blenderbot-small": Layout(pre_norm=False, embed_norm="before_positions", encoder_embed_norm="after_positions"),
}


def _embed_scale(stack: Any) -> float:
    s = getattr(stack.embed_tokens, "embed_scale", None)
    if s is None:
        s = getattr(stack, "embed_scale", 1.0)
    return float(s if s is not None else 1.0)


def _position_table(stack: Any, layout: Layout, max_positions: int) -> torch.Tensor:
    """The position rows of steps 0, 1, ... (the offset applied): row p is position p's vector."""
    pe = stack.embed_positions
    if layout.sinusoidal:
        pad = int(pe.padding_idx)
        return pe.get_embedding(max_positions + pad + 1, pe.embedding_dim, pad)[pad + 1 :].detach().clone()
    return pe.weight.detach()[layout.position_offset :].clone()


def _sinusoidal_rows(stack: Any, max_positions: int) -> torch.Tensor:
    pe = stack.embed_positions
    return pe.get_embedding(max_positions + int(pe.padding_idx) + 1, pe.embedding_dim, int(pe.padding_idx)).detach()


class BartLikeEncoderGraph(nn.Module):
    """Encoder pass of a BART-like model plus every decoder layer's cross-attention keys/values."""

    pos_w: torch.Tensor

    def __init__(self, model: Any) -> None:
        super().__init__()
        cfg = model.config
        self.layout = LAYOUTS[cfg.model_type]
        enc = model.model.encoder
        self.embed, self.scale, self.layers = enc.embed_tokens, _embed_scale(enc), enc.layers
        self.emb_norm = getattr(enc, "layernorm_embedding", None)
        self.final_norm = getattr(enc, "layer_norm", None) if self.layout.pre_norm else None
        self.pad = int(cfg.pad_token_id)
        table = (_sinusoidal_rows(enc, cfg.max_position_embeddings) if self.layout.sinusoidal
                 else _position_table(enc, self.layout, cfg.max_position_embeddings))
        self.register_buffer("pos_w", table)
        self.heads = cfg.encoder_attention_heads
        self.dim = cfg.d_model // self.heads
        _, self.dec_heads, self.dec_dim = cache_dims(cfg)
        self.cross = [(la.encoder_attn.k_proj, la.encoder_attn.v_proj) for la in model.model.decoder.layers]
        self.dec_layers = model.model.decoder.layers  # registers the cross projections as sub-modules

    def _positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.layout.sinusoidal:  # Hugging Face's rule: positions count the non-pad tokens from padding_idx + 1
            real = input_ids.ne(self.pad).to(torch.long)
            return nn.functional.embedding(torch.cumsum(real, dim=1) * real + self.pad, self.pos_w)
        return self.pos_w[: input_ids.shape[1]].unsqueeze(0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        bias = _encoder_bias(attention_mask)
        x = nn.functional.embedding(input_ids, self.embed.weight) * self.scale + self._positions(input_ids)
        if (self.layout.encoder_embed_norm or self.layout.embed_norm) and self.emb_norm is not None:
            x = self.emb_norm(x)
        pre = self.layout.pre_norm
        for layer in self.layers:
            att = layer.self_attn
            h = layer.self_attn_layer_norm(x) if pre else x
            q, k, v = (_split_heads(p(h), self.heads, self.dim) for p in (att.q_proj, att.k_proj, att.v_proj))
            x = x + att.out_proj(_merge_heads(_attend(q, k, v, bias, att.scaling)))
            x = x if pre else layer.self_attn_layer_norm(x)
            h = layer.final_layer_norm(x) if pre else x
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
            x = x if pre else layer.final_layer_norm(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return (bias, *_cross_kv(x, self.cross, self.dec_heads, self.dec_dim))


class BartLikeDecoderGraph(nn.Module):
    """One decoder step of a BART-like model, shaped as :class:`testbed.export.wrappers.MarianDecoderGraph`
    (2-D rows, fused self-attention q/k/v, scales folded into the weights)."""

    embed_w: torch.Tensor
    pos_w: torch.Tensor

    def __init__(self, model: Any) -> None:
        super().__init__()
        cfg = model.config
        self.layout = LAYOUTS[cfg.model_type]
        dec = model.model.decoder
        self.layers = dec.layers
        _, self.heads, self.dim = cache_dims(cfg)
        self.pad = int(cfg.pad_token_id)
        self.register_buffer("embed_w", dec.embed_tokens.weight.detach() * _embed_scale(dec))
        self.register_buffer("pos_w", _position_table(dec, self.layout, cfg.max_position_embeddings))
        self.emb_norm = getattr(dec, "layernorm_embedding", None) if self.layout.embed_norm else None
        self.final_norm = getattr(dec, "layer_norm", None) if self.layout.pre_norm else None
        self.qkv = nn.ModuleList(
            _fused([la.self_attn.q_proj, la.self_attn.k_proj, la.self_attn.v_proj], [la.self_attn.scaling, 1.0, 1.0])
            for la in self.layers)
        self.cross_q = nn.ModuleList(_fused([la.encoder_attn.q_proj], [la.encoder_attn.scaling]) for la in self.layers)
        self.head = _untied_head(model.lm_head.weight, getattr(model, "final_logits_bias", None))

    def _embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.reshape(-1)
        x = nn.functional.embedding(ids, self.embed_w)
        pos = nn.functional.embedding(position_ids.reshape(-1), self.pos_w)
        if self.layout.sinusoidal:  # a <pad> token sits at padding_idx, whose row is zero
            pos = pos * ids.ne(self.pad).to(pos.dtype).unsqueeze(1)
        if self.emb_norm is not None and self.layout.embed_norm == "before_positions":
            return self.emb_norm(x) + pos
        x = x + pos
        return self.emb_norm(x) if self.emb_norm is not None else x

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, self_bias: torch.Tensor,
        encoder_bias: torch.Tensor, *caches: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        n = len(self.layers)
        past, cross = caches[: 2 * n], caches[2 * n :]
        h, d, pre = self.heads, self.dim, self.layout.pre_norm
        x = self._embed(input_ids, position_ids)
        presents: list[torch.Tensor] = []
        for li, layer in enumerate(self.layers):
            y = layer.self_attn_layer_norm(x) if pre else x
            a, k, v = _self_attention_step(y, self.qkv[li], past[2 * li], past[2 * li + 1], self_bias, h, d)
            presents += [k, v]
            x = x + _lin(a, layer.self_attn.out_proj)
            x = x if pre else layer.self_attn_layer_norm(x)
            y = layer.encoder_attn_layer_norm(x) if pre else x
            a = _step_attention(_lin(y, self.cross_q[li]), cross[2 * li], cross[2 * li + 1], encoder_bias, h, d)
            x = x + _lin(a, layer.encoder_attn.out_proj)
            x = x if pre else layer.encoder_attn_layer_norm(x)
            y = layer.final_layer_norm(x) if pre else x
            x = x + _lin(layer.activation_fn(_lin(y, layer.fc1)), layer.fc2)
            x = x if pre else layer.final_layer_norm(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return (_lin(x, self.head), *presents)


# --------------------------------------------------------------------------- T5
def _t5_bias(att: Any, relative: torch.Tensor, bidirectional: bool) -> torch.Tensor:
    """(..., H) relative position bias of ``relative`` (key position - query position) by the model's bucketing."""
    buckets = att._relative_position_bucket(relative, bidirectional=bidirectional,
                                            num_buckets=att.relative_attention_num_buckets,
                                            max_distance=att.relative_attention_max_distance)
    return att.relative_attention_bias(buckets)


def _t5_ff(ff: Any, x: torch.Tensor) -> torch.Tensor:
    """T5LayerFF (pre-norm, residual) with every projection as MatMul (2-D rows) or per-token Linear."""
    h = ff.layer_norm(x)
    mlp = ff.DenseReluDense
    if hasattr(mlp, "wi_0"):  # gated (T5 v1.1, flan-t5): act(wi_0 h) * wi_1 h
        h = mlp.act(_lin(h, mlp.wi_0)) * _lin(h, mlp.wi_1)
    else:
        h = mlp.act(_lin(h, mlp.wi))
    return x + _lin(h, mlp.wo)


class T5EncoderGraph(nn.Module):
    """T5 encoder (bidirectional relative position bias) plus every decoder layer's cross keys/values."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        cfg = model.config
        self.embed = model.shared
        self.blocks = model.encoder.block
        self.final_norm = model.encoder.final_layer_norm
        self.heads, self.dim = int(cfg.num_heads), int(cfg.d_kv)
        self.dec_blocks = model.decoder.block
        self.cross = [(b.layer[1].EncDecAttention.k, b.layer[1].EncDecAttention.v) for b in model.decoder.block]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = input_ids.shape[1]
        mask = _encoder_bias(attention_mask)
        pos = torch.arange(s)
        rel = _t5_bias(self.blocks[0].layer[0].SelfAttention, pos.unsqueeze(0) - pos.unsqueeze(1), True)
        bias = rel.permute(2, 0, 1).unsqueeze(0) + mask  # (B, H, S, S)
        x = self.embed(input_ids)
        for block in self.blocks:
            att = block.layer[0].SelfAttention
            h = block.layer[0].layer_norm(x)
            q, k, v = (_split_heads(p(h), self.heads, self.dim) for p in (att.q, att.k, att.v))
            x = x + att.o(_merge_heads(_attend(q, k, v, bias, 1.0)))
            x = _t5_ff(block.layer[-1], x)
        x = self.final_norm(x)
        return (mask, *_cross_kv(x, self.cross, self.heads, self.dim))


class T5DecoderGraph(nn.Module):
    """One T5 decoder step with the relative position bias of the new token over the cache."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        cfg = model.config
        self.blocks = model.decoder.block
        self.embed = model.shared
        self.final_norm = model.decoder.final_layer_norm
        self.heads, self.dim = int(cfg.num_heads), int(cfg.d_kv)
        self.rel_att = self.blocks[0].layer[0].SelfAttention
        self.qkv = nn.ModuleList(
            _fused([b.layer[0].SelfAttention.q, b.layer[0].SelfAttention.k, b.layer[0].SelfAttention.v],
                   [1.0, 1.0, 1.0]) for b in self.blocks)
        self.out_scale = float(cfg.d_model) ** -0.5 if getattr(cfg, "scale_decoder_outputs", False) else 1.0
        self.head = _untied_head(model.lm_head.weight * self.out_scale)

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, self_bias: torch.Tensor,
        encoder_bias: torch.Tensor, *caches: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        n = len(self.blocks)
        past, cross = caches[: 2 * n], caches[2 * n :]
        h, d = self.heads, self.dim
        t = past[0].shape[2]
        # cache column j of a row holds position position_ids - t + j (the row's cache ends at the new token)
        keys = position_ids - t + torch.arange(t + 1).unsqueeze(0)  # (B, t+1)
        rel = _t5_bias(self.rel_att, keys - position_ids, False)  # (B, t+1, H)
        bias = rel.transpose(1, 2).unsqueeze(2) + self_bias  # (B, H, 1, t+1)
        x = nn.functional.embedding(input_ids.reshape(-1), self.embed.weight)
        presents: list[torch.Tensor] = []
        for li, block in enumerate(self.blocks):
            y = block.layer[0].layer_norm(x)
            a, k, v = _self_attention_step(y, self.qkv[li], past[2 * li], past[2 * li + 1], bias, h, d)
            presents += [k, v]
            x = x + _lin(a, block.layer[0].SelfAttention.o)
            ca = block.layer[1].EncDecAttention
            y = block.layer[1].layer_norm(x)
            a = _step_attention(_lin(y, ca.q), cross[2 * li], cross[2 * li + 1], encoder_bias, h, d)
            x = x + _lin(a, ca.o)
            x = _t5_ff(block.layer[-1], x)
        return (_lin(self.final_norm(x), self.head), *presents)
