"""Quantized ``nn.Linear`` replacements for the static torch engine: int8 and fp8 matmuls.

* :class:`Int8Linear`: per-output-channel symmetric int8 weights, per-token (per-row) dynamic
  symmetric int8 activations, ``torch._int_mm`` (int8 x int8 -> int32), then one rescale by
  ``scale_x[row] * scale_w[col]``.  ``_int_mm`` exists on CPU and CUDA; CUDA needs more than 16
  rows and dimensions divisible by 8, so rows are padded there.
* :class:`Fp8Linear`: the same scheme in float8 e4m3 (per-channel weight, per-token activation
  scales) through ``torch._scaled_mm`` with row-wise scales (Hopper: H100/H200); CUDA needs every
  dimension divisible by 16 and a bf16 output, so rows are padded there.

:func:`quantize_linears` swaps every eligible Linear of a model in place.  The output projection
(``lm_head``) stays in float: it is the most sensitive matmul and Marian's vocabulary (58,101)
is not divisible by 16.  Both are weight *and* activation quantisation (the GPU kernels take two
int8 / fp8 operands); the weights are what is stored quantized.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

INT8_MAX = 127.0
FP8_MAX = 448.0  # largest finite float8_e4m3fn
KINDS = ("int8", "fp8")


def quantize_rows(x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row quantisation of a 2-D float tensor: (quantized, scale of shape (rows, 1), fp32)."""
    amax = x.detach().abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12)
    if kind == "int8":
        scale = amax / INT8_MAX
        return torch.round(x.float() / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scale
    if kind == "fp8":
        scale = amax / FP8_MAX
        return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale
    raise ValueError(f"quantisation kind {kind!r}: expected one of {', '.join(KINDS)}")


class _QuantLinear(nn.Module):
    kind = ""
    weight_q: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = linear.weight.dtype
        q, scale = quantize_rows(linear.weight.detach(), self.kind)  # per output channel
        self.register_buffer("weight_q", q.contiguous())  # (out, in)
        self.register_buffer("weight_scale", scale.view(1, -1).contiguous())  # (1, out), fp32
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}"

    def _mm(self, xq: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:  # (M, out) fp32
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        xq, sx = quantize_rows(x2, self.kind)
        y = self._mm(xq, sx)
        if self.bias is not None:
            y = y + self.bias
        return y.to(self.out_dtype).reshape(*shape[:-1], self.out_features)


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] >= rows:
        return t
    return torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))], dim=0)


class Int8Linear(_QuantLinear):
    kind = "int8"

    def _mm(self, xq: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:
        m = xq.shape[0]
        if xq.is_cuda:  # CUDA _int_mm: more than 16 rows, a multiple of 8
            xq = _pad_rows(xq, max(24, -(-m // 8) * 8))
        acc = torch._int_mm(xq, self.weight_q.t())[:m]
        return acc.float() * sx * self.weight_scale


class Fp8Linear(_QuantLinear):
    kind = "fp8"

    def _mm(self, xq: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:
        m = xq.shape[0]
        if xq.is_cuda:  # CUDA _scaled_mm: every dimension a multiple of 16
            rows = -(-m // 16) * 16
            xq, sx = _pad_rows(xq, rows), _pad_rows(sx, rows)
        out_dtype = torch.bfloat16 if xq.is_cuda else torch.float32  # row-wise scaling on CUDA outputs bf16
        y = torch._scaled_mm(xq, self.weight_q.t(), scale_a=sx, scale_b=self.weight_scale, out_dtype=out_dtype)
        return y[:m].float()


def eligible(name: str, linear: nn.Linear, kind: str) -> bool:
    """Quantize this Linear?  Not the output projection; fp8 needs dimensions divisible by 16, int8 by 8."""
    if name.split(".")[-1] in ("lm_head", "final_logits"):
        return False
    mult = 16 if kind == "fp8" else 8
    return linear.in_features % mult == 0 and linear.out_features % mult == 0


def quantize_linears(model: nn.Module, kind: str) -> int:
    """Replace every eligible ``nn.Linear`` of ``model`` in place; returns how many were replaced."""
    cls: Any = {"int8": Int8Linear, "fp8": Fp8Linear}.get(kind)
    if cls is None:
        raise ValueError(f"quantisation kind {kind!r}: expected one of {', '.join(KINDS)}")
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and eligible(n, m, kind)]
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, cls(linear))
    skipped = sum(1 for m in model.modules() if isinstance(m, nn.Linear))
    log.info("%s: %d Linear layers quantized, %d kept in float", kind, len(targets), skipped)
    return len(targets)
