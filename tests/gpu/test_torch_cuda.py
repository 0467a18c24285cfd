"""The torch engine on CUDA (deselected by default; run with ``pytest -m gpu`` on a GPU machine)."""

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
def cpu_fp32(sentences):
    with create_engine(EngineConfig(model="marian-en-de")) as eng:
        return [g.token_ids for g in eng.generate([ex.text for ex in sentences])]


def test_cuda_fp32_matches_cpu_fp32_and_streams_like_batches(sentences, cpu_fp32):
    with create_engine(EngineConfig(model="marian-en-de", device="cuda")) as eng:
        batch = eng.generate([ex.text for ex in sentences])
        same = sum(g.token_ids == ref for g, ref in zip(batch, cpu_fp32))
        # fp32 GEMMs on GPU and CPU round differently; near-ties may flip a token
        assert same >= 0.9 * len(sentences), f"{same}/{len(sentences)} identical"
        for ex, g in list(zip(sentences, batch))[:16]:
            s = eng.stream(ex.text).run()
            assert s.token_ids == g.token_ids, ex.text
            assert s.encoder_done_ns is not None and s.encoder_done_ns <= s.events[0].t_ns


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_half_precisions_stay_close_to_fp32(sentences, precision):
    refs = [str(ex.reference) for ex in sentences]
    texts = [ex.text for ex in sentences]
    with create_engine(EngineConfig(model="marian-en-de", device="cuda")) as eng:
        fp32 = score([g.text for g in eng.generate(texts)], refs)["bleu"]
    with create_engine(EngineConfig(model="marian-en-de", device="cuda", precision=precision)) as eng:
        got = score([g.text for g in eng.generate(texts)], refs)["bleu"]
        s = eng.stream(texts[0]).run()
        assert s.finish_reason == "eos" and s.text
    assert got >= fp32 - 3.0, (precision, got, fp32)


def test_int8_on_cuda_is_refused_with_the_reason():
    from testbed.errors import ConfigError

    with pytest.raises(ConfigError, match="int8"):
        create_engine(EngineConfig(model="marian-en-de", device="cuda", precision="int8"))
