"""The static-cache torch engines on CUDA: CUDA graphs, half precisions, int8 / fp8 matmuls
(deselected by default; run with ``pytest -m gpu`` on a GPU machine)."""

from __future__ import annotations

import pytest

from testbed.config import EngineConfig
from testbed.engines.registry import create_engine
from testbed.metrics.accuracy import score

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def eager_fp32(sentences):
    with create_engine(EngineConfig(model="marian-en-de", device="cuda")) as eng:
        return [eng.stream(ex.text).run() for ex in sentences]


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("rows", [1, 40])
def test_quantized_linear_on_cuda_matches_the_cpu_kernel(kind, rows):
    """int8: integer accumulation is exact on both devices; fp8: CUDA outputs bf16 (8 mantissa bits)."""
    from testbed.engines.torch.qlinear import Fp8Linear, Int8Linear

    if kind == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 matmuls need compute capability 8.9+")
    torch.manual_seed(0)
    lin = torch.nn.Linear(512, 2048)
    x = torch.randn(rows, 512)
    q = (Int8Linear if kind == "int8" else Fp8Linear)(lin)
    cpu = q(x)
    gpu = q.to("cuda")(x.cuda()).cpu()
    tol = 1e-4 if kind == "int8" else 2 ** -7
    torch.testing.assert_close(gpu, cpu, rtol=tol, atol=tol * float(cpu.abs().max()))


def test_torch_static_fp32_captures_cuda_graphs_and_gives_eager_tokens(sentences, eager_fp32):
    with create_engine(EngineConfig(model="marian-en-de", engine="torch-static", device="cuda")) as eng:
        got = [eng.stream(ex.text).run() for ex in sentences]
        assert eng._slots and all(s.graph is not None for v in eng._slots.values() for s in v)
        batch = eng.generate([ex.text for ex in sentences[:8]])
    same = sum(a.token_ids == b.token_ids for a, b in zip(got, eager_fp32))
    # fp32 on GPU: attention over a padded static cache may round a near-tie differently
    assert same >= 0.9 * len(sentences), f"{same}/{len(sentences)} identical"
    assert [g.token_ids for g in batch] == [s.token_ids for s in got[:8]]
    assert all(s.encoder_done_ns is not None and s.encoder_done_ns <= s.events[0].t_ns for s in got)


@pytest.mark.parametrize(("engine", "precision"), [("torch-static", "fp16"), ("torch-static", "bf16"),
                                                   ("torch-static", "int8"), ("torch-static", "fp8")])
def test_reduced_precisions_stay_close_to_fp32(sentences, eager_fp32, engine, precision):
    if precision == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 matmuls need compute capability 8.9+")
    refs = [str(ex.reference) for ex in sentences]
    fp32 = score([s.text for s in eager_fp32], refs)["bleu"]
    with create_engine(EngineConfig(model="marian-en-de", engine=engine, device="cuda", precision=precision)) as eng:
        outs = [eng.stream(ex.text).run() for ex in sentences]
    assert all(o.text for o in outs)
    got = score([o.text for o in outs], refs)["bleu"]
    assert got >= fp32 - 3.0, (engine, precision, got, fp32)
