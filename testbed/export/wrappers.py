"""Small torch modules that re-express a Hugging Face model as ONNX-exportable step functions.

Why own wrappers (and not the model's ``forward``): the graphs need a KV cache passed in and out
as plain tensors, the cross-attention keys/values computed once, logits of the last position
only, and as few shape computations per step as possible.  Transformers 5 keeps its caches in
Python objects, which the exporter cannot carry across calls; optimum-onnx pins transformers <
4.58.  The wrappers reuse the model's own sub-modules (projections, layer norms, activations,
rotary embedding) and re-implement only attention and cache handling, so the exported numbers
are the model's numbers; the export pipeline validates them against the torch model.

Graphs (``B`` batch, ``S`` source length, ``T`` cached length, ``H`` heads, ``D`` head size):

* seq2seq (Marian): ``encoder``: input_ids, attention_mask (B,S) -> encoder_bias (B,1,1,S) and
  cross_k.i / cross_v.i (B,H,S,D) for every decoder layer (the cross-attention projections run
  here, once per request); ``decoder``: input_ids (B,1), encoder_bias, past_k.i / past_v.i
  (B,H,T,D), cross_k.i / cross_v.i -> logits (B,V) and present_k.i / present_v.i (B,H,T+1,D).
  The first step passes T = 0 (empty past), so one decoder graph serves every step.
* causal (Llama): ``decoder``: input_ids (B,L), attention_mask (B,T+L), position_ids (B,L),
  past_k.i / past_v.i (B,Hkv,T,D) -> logits (B,V) of the last position and present_k.i /
  present_v.i.  Prefill is the same graph with T = 0.

The output projection is an untied copy of the embedding: a tied projection exports as a
MatMul on a transposed shared initializer, which the int8 quantizer leaves in fp32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

MASK_VALUE = -1.0e4  # additive mask: exp() underflows to 0 in fp32, still representable in fp16


def _untied_head(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        head.weight.copy_(weight.detach().clone())
        if bias is not None and head.bias is not None:
            head.bias.copy_(bias.detach().reshape(-1).clone())
    return head


def _split_heads(x: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    """(B, L, heads*dim) -> (B, heads, L, dim)."""
    return x.view(x.shape[0], x.shape[1], heads, dim).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, dim) -> (B, L, heads*dim)."""
    b, h, l, d = x.shape
    return x.transpose(1, 2).reshape(b, l, h * d)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    w = torch.matmul(q * scale, k.transpose(2, 3))
    if bias is not None:
        w = w + bias
    return torch.matmul(torch.softmax(w, dim=-1), v)


# --------------------------------------------------------------------------- Marian / BART-like
class MarianEncoderGraph(nn.Module):
    """Encoder pass plus every decoder layer's cross-attention keys and values."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        m = model.model
        self.embed = m.encoder.embed_tokens
        self.pos = m.encoder.embed_positions
        self.scale = float(m.encoder.embed_scale)
        self.layers = m.encoder.layers
        self.dec_layers = m.decoder.layers
        self.heads = model.config.decoder_attention_heads
        self.enc_heads = model.config.encoder_attention_heads
        self.dim = model.config.d_model // self.heads
        self.enc_dim = model.config.d_model // self.enc_heads

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = input_ids.shape[1]
        x = self.embed(input_ids) * self.scale + self.pos.weight[:s].unsqueeze(0)
        bias = (1.0 - attention_mask.to(torch.float32)).view(attention_mask.shape[0], 1, 1, s) * MASK_VALUE
        for layer in self.layers:
            att = layer.self_attn
            q = _split_heads(att.q_proj(x), self.enc_heads, self.enc_dim)
            k = _split_heads(att.k_proj(x), self.enc_heads, self.enc_dim)
            v = _split_heads(att.v_proj(x), self.enc_heads, self.enc_dim)
            x = layer.self_attn_layer_norm(x + att.out_proj(_merge_heads(_attend(q, k, v, bias, att.scaling))))
            x = layer.final_layer_norm(x + layer.fc2(layer.activation_fn(layer.fc1(x))))
        outs: list[torch.Tensor] = [bias]
        for layer in self.dec_layers:
            outs.append(_split_heads(layer.encoder_attn.k_proj(x), self.heads, self.dim))
            outs.append(_split_heads(layer.encoder_attn.v_proj(x), self.heads, self.dim))
        return tuple(outs)


class MarianDecoderGraph(nn.Module):
    """One decoder step (one new token per row) with the self-attention cache passed in and out."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        m = model.model
        self.embed = m.decoder.embed_tokens
        self.pos = m.decoder.embed_positions
        self.scale = float(m.decoder.embed_scale)
        self.layers = m.decoder.layers
        self.heads = model.config.decoder_attention_heads
        self.dim = model.config.d_model // self.heads
        self.head = _untied_head(model.lm_head.weight, model.final_logits_bias)

    def forward(self, input_ids: torch.Tensor, encoder_bias: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(self.layers)
        past, cross = caches[: 2 * n], caches[2 * n :]
        t = past[0].shape[2]
        x = self.embed(input_ids) * self.scale + self.pos.weight[t : t + 1].unsqueeze(0)
        presents: list[torch.Tensor] = []
        for li, layer in enumerate(self.layers):
            att = layer.self_attn
            q = _split_heads(att.q_proj(x), self.heads, self.dim)
            k = torch.cat([past[2 * li], _split_heads(att.k_proj(x), self.heads, self.dim)], dim=2)
            v = torch.cat([past[2 * li + 1], _split_heads(att.v_proj(x), self.heads, self.dim)], dim=2)
            presents += [k, v]
            x = layer.self_attn_layer_norm(x + att.out_proj(_merge_heads(_attend(q, k, v, None, att.scaling))))
            ca = layer.encoder_attn
            q = _split_heads(ca.q_proj(x), self.heads, self.dim)
            y = _attend(q, cross[2 * li], cross[2 * li + 1], encoder_bias, ca.scaling)
            x = layer.encoder_attn_layer_norm(x + ca.out_proj(_merge_heads(y)))
            x = layer.final_layer_norm(x + layer.fc2(layer.activation_fn(layer.fc1(x))))
        logits = self.head(x[:, -1, :])
        return (logits, *presents)


# --------------------------------------------------------------------------- Llama-like
class LlamaDecoderGraph(nn.Module):
    """Prefill or one step of a Llama-architecture decoder with the KV cache passed in and out."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        cfg = model.config
        m = model.model
        self.embed = m.embed_tokens
        self.layers = m.layers
        self.norm = m.norm
        self.rotary = m.rotary_emb
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.head = _untied_head(model.lm_head.weight, getattr(model.lm_head, "bias", None))

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rot * sin

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        b, length = input_ids.shape
        t = past[0].shape[2]
        x = self.embed(input_ids)
        cos, sin = self.rotary(x, position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        i = torch.arange(length).unsqueeze(1)
        j = torch.arange(t + length).unsqueeze(0)
        allowed = (j <= i + t).view(1, 1, length, t + length) & attention_mask.bool().view(b, 1, 1, t + length)
        bias = (~allowed).to(torch.float32) * MASK_VALUE
        rep = self.heads // self.kv_heads
        presents: list[torch.Tensor] = []
        for li, layer in enumerate(self.layers):
            att = layer.self_attn
            h = layer.input_layernorm(x)
            q = self._rope(_split_heads(att.q_proj(h), self.heads, self.dim), cos, sin)
            k = self._rope(_split_heads(att.k_proj(h), self.kv_heads, self.dim), cos, sin)
            v = _split_heads(att.v_proj(h), self.kv_heads, self.dim)
            k = torch.cat([past[2 * li], k], dim=2)
            v = torch.cat([past[2 * li + 1], v], dim=2)
            presents += [k, v]
            if rep > 1:
                k = k.unsqueeze(2).expand(b, self.kv_heads, rep, t + length, self.dim).reshape(
                    b, self.heads, t + length, self.dim)
                v = v.unsqueeze(2).expand(b, self.kv_heads, rep, t + length, self.dim).reshape(
                    b, self.heads, t + length, self.dim)
            x = x + att.o_proj(_merge_heads(_attend(q, k, v, bias, att.scaling)))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = self.head(self.norm(x[:, -1:, :])).squeeze(1)
        return (logits, *presents)
