"""The quantized Linear replacements of the static torch engine, on CPU (torch._int_mm and
torch._scaled_mm both exist on CPU), against float references, and the shape buckets."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from testbed.engines.torch.qlinear import (  # noqa: E402
    FP8_MAX,
    Fp8Linear,
    Int8Linear,
    quantize_linears,
    quantize_rows,
)


@pytest.fixture
def layer():
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 96)
    x = torch.randn(2, 5, 256) * torch.linspace(0.1, 3.0, 256)  # uneven channels, as activations are
    return lin, x


def test_int8_linear_is_exact_integer_arithmetic_and_within_the_rounding_bound(layer):
    lin, x = layer
    q = Int8Linear(lin)
    got = q(x).reshape(-1, 96).double()
    x2 = x.reshape(-1, 256)
    xq, sx = quantize_rows(x2, "int8")
    # reference: the same quantized operands multiplied in float64 (the int32 accumulation is exact)
    deq = (xq.double() @ q.weight_q.double().t()) * sx.double() * q.weight_scale.double() + lin.bias.double()
    torch.testing.assert_close(got, deq, rtol=1e-5, atol=1e-5)
    # against the float layer: each operand is off by at most half its step (scale / 2), so
    # |x.w - x^.w^| <= sum_k |x_k| sw/2 + |w_k| sx/2 + sx sw / 4
    w = lin.weight.detach().double()
    sw, sxd = q.weight_scale.double(), sx.double()
    bound = x2.double().abs() @ (torch.ones_like(w).t() * sw / 2) + sxd / 2 * w.abs().sum(1) + 256 * sxd * sw / 4
    err = (got - lin(x2).double()).abs()
    assert (err <= bound + 1e-5).all(), float((err - bound).max())
    assert float(err.max()) > 0  # it is quantized: not the float layer itself


def test_fp8_linear_matches_its_dequantized_operands_and_stays_near_the_float_layer(layer):
    lin, x = layer
    q = Fp8Linear(lin)
    got = q(x).reshape(-1, 96).double()
    x2 = x.reshape(-1, 256)
    xq, sx = quantize_rows(x2, "fp8")
    assert float(xq.float().abs().max()) == FP8_MAX  # each row's largest value maps onto the format's largest
    deq = (xq.double() * sx.double()) @ (q.weight_q.double() * q.weight_scale.double().t()).t() + lin.bias.double()
    torch.testing.assert_close(got, deq, rtol=1e-4, atol=1e-4)
    # e4m3 keeps 3 mantissa bits: each operand within 2^-4 relative (normals) or 2^-10 x scale (subnormals)
    w = lin.weight.detach().double()
    dx = torch.maximum(x2.double().abs() / 16, sx.double() * 2 ** -10)
    dw = torch.maximum(w.abs() / 16, q.weight_scale.double().t() * 2 ** -10)
    bound = dx @ w.abs().t() + x2.double().abs() @ dw.t() + dx @ dw.t()
    err = (got - lin(x2).double()).abs()
    assert (err <= bound + 1e-4).all(), float((err - bound).max())


def test_quantize_linears_keeps_the_output_projection_and_odd_shapes_in_float():
    def model():
        m = torch.nn.Module()
        m.body = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 24))
        m.lm_head = torch.nn.Linear(32, 64)
        return m

    m = model()
    assert quantize_linears(m, "fp8") == 1  # 32 -> 24: 24 is not divisible by 16
    assert isinstance(m.body[0], Fp8Linear) and type(m.body[2]) is torch.nn.Linear
    assert type(m.lm_head) is torch.nn.Linear
    m = model()
    assert quantize_linears(m, "int8") == 2  # int8 needs multiples of 8 only
    assert isinstance(m.body[2], Int8Linear) and type(m.lm_head) is torch.nn.Linear
    with pytest.raises(ValueError, match="int4"):
        quantize_linears(m, "int4")


def test_buckets():
    from testbed.engines.torch.static import bucket

    assert [bucket(n) for n in (1, 16, 17, 129, 512, 9000)] == [16, 16, 32, 256, 512, 9000]
