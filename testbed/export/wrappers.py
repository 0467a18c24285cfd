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
  cross_k.i (B,H,D,S, transposed) / cross_v.i (B,H,S,D) for every decoder layer (the cross-attention projections run
  here, once per request); ``decoder``: input_ids (B,1), position_ids (B,1) (each row's own
  position), self_bias (B,1,1,T+1) (additive mask over the cached positions and the new one:
  0, or MASK_VALUE for the left padding of a row that joined a running batch later), encoder_bias,
  past_k.i / past_v.i (B,H,T,D), cross_k.i / cross_v.i -> logits (B,V) and present_k.i /
  present_v.i (B,H,T+1,D).  The first step passes T = 0 (empty past), so one decoder graph serves
  every step, and rows at different positions share a step (continuous batching).
* causal (Llama, Qwen2 (its q/k/v biases are in the projections), GPT-2): ``decoder``:
  input_ids (B,L), attention_mask (B,T+L), position_ids (B,L),
  past_k.i / past_v.i (B,Hkv,T,D) -> logits (B,V) of the last position and present_k.i /
  present_v.i.  Prefill is the same graph with T = 0.

The output projection is an untied copy of the embedding: a tied projection exports as a
MatMul on a transposed shared initializer, which the int8 quantizer leaves in fp32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from testbed.engines.onnxruntime.contract import MASK_VALUE  # the graphs' contract with the runner


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


def _merge_heads(x: torch.Tensor, b: Any = None, n: Any = None) -> torch.Tensor:
    """(B, heads, L, dim) -> (B, L, heads*dim).  Pass B and L where the graph already has them (its
    inputs' shape): the exported reshape then reads one shape computed once a step, not one per layer."""
    if b is None or n is None:
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)
    return x.transpose(1, 2).reshape(b, n, -1)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    w = torch.matmul(q * scale, k.transpose(2, 3))
    if bias is not None:
        w = w + bias
    return torch.matmul(torch.softmax(w, dim=-1), v)


# --------------------------------------------------------------------------- Marian / BART-like
def _fused(linears: list[nn.Linear], scales: list[float]) -> nn.Linear:
    """One Linear computing several (scaled) projections of the same input: one MatMul per step."""
    w = torch.cat([lin.weight.detach() * s for lin, s in zip(linears, scales)], dim=0)
    biased = linears[0].bias is not None  # all or none (T5 has none)
    out = nn.Linear(w.shape[1], w.shape[0], bias=biased)
    with torch.no_grad():
        out.weight.copy_(w)
        if biased:
            out.bias.copy_(torch.cat([lin.bias.detach() * s for lin, s in zip(linears, scales)], dim=0))
    return out


class MarianEncoderGraph(nn.Module):
    """Encoder pass plus every decoder layer's cross-attention keys (transposed) and values."""

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
            # keys already transposed (B, H, D, S): the decoder multiplies by them without a Transpose
            outs.append(_split_heads(layer.encoder_attn.k_proj(x), self.heads, self.dim).transpose(2, 3))
            outs.append(_split_heads(layer.encoder_attn.v_proj(x), self.heads, self.dim))
        return tuple(outs)


class MarianDecoderGraph(nn.Module):
    """One decoder step (one new token per row) with the self-attention cache passed in and out.

    Shaped for a small per-step graph: with one token per row, (B, 1, H, D) and (B, H, 1, D) share a
    memory layout, so every head split/merge is a constant Reshape (no Shape/Gather/Transpose
    chains); q/k/v of self-attention are one fused projection; the attention scale is folded into
    the query weights and the embedding scale into the embedding table.
    """

    embed_w: torch.Tensor
    pos_w: torch.Tensor

    def __init__(self, model: Any) -> None:
        super().__init__()
        m = model.model
        self.layers = m.decoder.layers
        self.heads = model.config.decoder_attention_heads
        self.d_model = model.config.d_model
        self.dim = self.d_model // self.heads
        self.register_buffer("embed_w", m.decoder.embed_tokens.weight.detach() * float(m.decoder.embed_scale))
        self.register_buffer("pos_w", m.decoder.embed_positions.weight.detach().clone())
        self.qkv = nn.ModuleList(
            _fused([la.self_attn.q_proj, la.self_attn.k_proj, la.self_attn.v_proj], [la.self_attn.scaling, 1.0, 1.0])
            for la in self.layers)
        self.cross_q = nn.ModuleList(_fused([la.encoder_attn.q_proj], [la.encoder_attn.scaling]) for la in self.layers)
        self.head = _untied_head(model.lm_head.weight, model.final_logits_bias)

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, self_bias: torch.Tensor,
        encoder_bias: torch.Tensor, *caches: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        n = len(self.layers)
        past, cross = caches[: 2 * n], caches[2 * n :]
        h, d, dm = self.heads, self.dim, self.d_model
        # rows stay 2-D (B, d_model): projections export as MatMul + Add, which ONNX Runtime fuses
        # into Gemm in fp32 and the int8 quantizer turns into one quantized MatMul with bias
        # (B, 1) ids and positions gathered as they come, one reshape to rows after the sum
        x = (nn.functional.embedding(input_ids, self.embed_w)
             + nn.functional.embedding(position_ids, self.pos_w)).reshape(-1, dm)
        presents: list[torch.Tensor] = []
        for li, layer in enumerate(self.layers):
            a, k, v = _self_attention_step(x, self.qkv[li], past[2 * li], past[2 * li + 1], self_bias, h, d)
            presents += [k, v]
            x = layer.self_attn_layer_norm(x + _lin(a, layer.self_attn.out_proj))
            y = _step_attention(_lin(x, self.cross_q[li]), cross[2 * li], cross[2 * li + 1], encoder_bias, h, d)
            x = layer.encoder_attn_layer_norm(x + _lin(y, layer.encoder_attn.out_proj))
            x = layer.final_layer_norm(x + _lin(layer.activation_fn(_lin(x, layer.fc1)), layer.fc2))
        return (_lin(x, self.head), *presents)


def _step_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, heads: int,
                    dim: int) -> torch.Tensor:
    """One query per row: q (B, H*D) against k (B,H,D,S) (already transposed) and v (B,H,S,D) -> (B, H*D)."""
    w = torch.softmax(torch.matmul(q.reshape(-1, heads, 1, dim), k) + bias, dim=-1)
    return torch.matmul(w, v).reshape(-1, heads * dim)


def _self_attention_step(x: torch.Tensor, qkv: Any, past_k: torch.Tensor, past_v: torch.Tensor,
                         bias: torch.Tensor, heads: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The new token's fused q/k/v, the cache grown by its k/v, and the attention output (B, H*D).

    One token a row: the fused (B, 3*H*D) row is (B, 3H, 1, D) in memory, so one Reshape and one Split
    give q, k and v with their heads (not a Split and a Reshape each)."""
    q, k, v = _lin(x, qkv).reshape(-1, 3 * heads, 1, dim).split(heads, dim=1)
    k = torch.cat([past_k, k], dim=2)
    v = torch.cat([past_v, v], dim=2)
    w = torch.softmax(torch.matmul(q, k.transpose(2, 3)) + bias, dim=-1)
    return torch.matmul(w, v).reshape(-1, heads * dim), k, v


def _lin(x: torch.Tensor, lin: Any) -> torch.Tensor:
    """``lin(x)`` written as MatMul + Add (a 2-D nn.Linear would export as Gemm, which int8 skips)."""
    y = torch.matmul(x, lin.weight.t())
    return y + lin.bias if lin.bias is not None else y


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
        # q, k and v in one MatMul a layer, rotated before they are split (below)
        self.qkv = nn.ModuleList(_fused([ly.self_attn.q_proj, ly.self_attn.k_proj, ly.self_attn.v_proj], [1.0] * 3)
                                 for ly in self.layers)
        # rotate_half as one Gather over a constant index and the sign folded into sin (computed
        # once a step): x * cos + x[..., roll] * (sign * sin) multiplies by the same numbers as
        # x * cos + cat(-x2, x1) * sin, so the graph computes the model's values exactly.  Applied to
        # the fused q|k|v row with cos 1 and sin 0 over v (v * 1 + v[roll] * 0 is v): every layer
        # rotates q and k together with four nodes (four each before)
        half = self.dim // 2
        roll = torch.cat([torch.arange(half, self.dim), torch.arange(half)])
        rotated = self.heads + self.kv_heads
        self.roll: torch.Tensor
        self.sign: torch.Tensor
        self.register_buffer("roll", torch.cat([roll + i * self.dim for i in range(rotated + self.kv_heads)]),
                             persistent=False)
        self.register_buffer("sign", torch.cat([-torch.ones(half), torch.ones(self.dim - half)]), persistent=False)
        self.rotated = rotated

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotary embedding of the fused q|k|v rows ``x`` (B, L, W); ``cos``/``sin`` (B, L, W) from
        :meth:`_rope_tables`."""
        return x * cos + x.index_select(2, self.roll) * sin

    def _rope_tables(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) cos and sin -> (B, L, W) over q|k|v: tiled over the q and k heads, 1 and 0 over v;
        ``sin`` carries rotate_half's sign."""
        v = self.kv_heads
        return (torch.cat([cos.repeat(1, 1, self.rotated), torch.ones_like(cos).repeat(1, 1, v)], dim=2),
                torch.cat([(sin * self.sign).repeat(1, 1, self.rotated), torch.zeros_like(sin).repeat(1, 1, v)], dim=2))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        b, length = input_ids.shape
        t = past[0].shape[2]
        x = self.embed(input_ids)
        cos, sin = self._rope_tables(*self.rotary(x, position_ids))
        i = torch.arange(length).unsqueeze(1)
        j = torch.arange(t + length).unsqueeze(0)
        allowed = (j <= i + t).view(1, 1, length, t + length) & attention_mask.bool().view(b, 1, 1, t + length)
        # grouped-query attention without copying K/V per query head: the rep query heads that share
        # a KV head are stacked along the query axis, (B, Hkv, rep*L, D) against K (B, Hkv, T, D), and
        # the mask repeated along it once a step
        rep = self.heads // self.kv_heads
        bias = ((~allowed).to(torch.float32) * MASK_VALUE).repeat(1, 1, rep, 1)
        presents: list[torch.Tensor] = []
        for li, layer in enumerate(self.layers):
            att = layer.self_attn
            q, k, v = self._rope(self.qkv[li](layer.input_layernorm(x)), cos, sin).split(
                [self.heads * self.dim, self.kv_heads * self.dim, self.kv_heads * self.dim], dim=2)
            q = _split_heads(q, self.heads, self.dim)
            k = _split_heads(k, self.kv_heads, self.dim)
            v = _split_heads(v, self.kv_heads, self.dim)
            k = torch.cat([past[2 * li], k], dim=2)
            v = torch.cat([past[2 * li + 1], v], dim=2)
            presents += [k, v]
            o = _attend(q.reshape(b, self.kv_heads, rep * length, self.dim), k, v, bias, att.scaling)
            x = x + att.o_proj(_merge_heads(o.view(b, self.heads, length, self.dim), b, length))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = self.head(self.norm(x[:, -1:, :])).squeeze(1)
        return (logits, *presents)


# --------------------------------------------------------------------------- GPT-2
class GPT2DecoderGraph(nn.Module):
    """Prefill or one step of GPT-2 (learned positions, fused q/k/v ``Conv1D``, pre-norm, tied head)
    with the same inputs and outputs as :class:`LlamaDecoderGraph`."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        cfg = model.config
        t = model.transformer
        self.wte, self.wpe, self.blocks, self.ln_f = t.wte, t.wpe, t.h, t.ln_f
        self.heads = cfg.n_head
        self.dim = cfg.n_embd // self.heads
        self.n_embd = cfg.n_embd
        self.head = _untied_head(model.lm_head.weight, getattr(model.lm_head, "bias", None))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        b, length = input_ids.shape
        t = past[0].shape[2]
        x = self.wte(input_ids) + self.wpe(position_ids)
        i = torch.arange(length).unsqueeze(1)
        j = torch.arange(t + length).unsqueeze(0)
        allowed = (j <= i + t).view(1, 1, length, t + length) & attention_mask.bool().view(b, 1, 1, t + length)
        bias = (~allowed).to(torch.float32) * MASK_VALUE
        presents: list[torch.Tensor] = []
        for li, block in enumerate(self.blocks):
            att = block.attn
            q, k, v = att.c_attn(block.ln_1(x)).split(self.n_embd, dim=2)
            q, k, v = (_split_heads(z, self.heads, self.dim) for z in (q, k, v))
            k = torch.cat([past[2 * li], k], dim=2)
            v = torch.cat([past[2 * li + 1], v], dim=2)
            presents += [k, v]
            x = x + att.c_proj(_merge_heads(_attend(q, k, v, bias, att.scaling)))
            x = x + block.mlp(block.ln_2(x))
        logits = self.head(self.ln_f(x[:, -1:, :])).squeeze(1)
        return (logits, *presents)
