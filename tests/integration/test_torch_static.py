"""The static-cache torch engines (torch-static, torch-compile) on the real embedded models, CPU fp32:
the same tokens as the eager torch engine."""

from __future__ import annotations

import pytest

from testbed.client.inproc import request_of
from testbed.config import EngineConfig
from testbed.datasets import load_dataset
from testbed.engines.registry import create_engine
from testbed.errors import ConfigError

pytestmark = pytest.mark.slow


def _tokens(engine_name: str, model: str, examples: list, max_new: int) -> list[list[int]]:
    cfg = EngineConfig(model=model, engine=engine_name, threads=2, max_new_tokens=max_new)
    with create_engine(cfg) as eng:
        return [eng.stream(request_of(ex)).run().token_ids for ex in examples]


@pytest.mark.parametrize(("model", "dataset", "n", "max_new"),
                         [("marian-en-de", "test", 24, 128), ("smollm2-135m-instruct", "chat", 4, 24)])
def test_torch_static_gives_the_eager_engines_tokens_at_fp32(model, dataset, n, max_new):
    examples = load_dataset(dataset, limit=n)
    eager = _tokens("torch", model, examples, max_new)
    static = _tokens("torch-static", model, examples, max_new)
    assert static == eager


@pytest.mark.compile
def test_torch_compile_gives_the_eager_engines_tokens_at_fp32():
    examples = load_dataset("test", limit=12)
    # sources of several lengths: buckets the warm-up compiled, and the dynamic graph for the others
    examples.sort(key=lambda ex: len(ex.text))
    assert _tokens("torch-compile", "marian-en-de", examples, 128) == _tokens("torch", "marian-en-de", examples, 128)


def test_min_tokens_is_honoured_and_a_second_request_reuses_the_slot():
    from testbed.engines.base import GenerationRequest

    with create_engine(EngineConfig(model="marian-en-de", engine="torch-static", threads=2)) as eng:
        first = eng.stream("Click OK.").run()
        again = eng.stream("Click OK.").run()  # the slot's caches are reset between requests
        forced = eng.stream(GenerationRequest(text="Click OK.", min_new_tokens=len(first.token_ids) + 3)).run()
        assert first.finish_reason == "eos" and again.token_ids == first.token_ids
        assert [len(v) for v in eng._slots.values()] == [1] and not eng._slots[(256, 16)][0].busy
        assert len(forced.token_ids) >= len(first.token_ids) + 3


def test_cuda_graph_capture_is_refused_on_cpu():
    with create_engine(EngineConfig(model="marian-en-de", engine="torch-static", threads=2)) as eng:
        eng.stream("Click OK.").run()
        slot = next(iter(eng._slots.values()))[0]
        with pytest.raises(ConfigError, match="CUDA graph can only be captured on a CUDA device"):
            slot.capture()


def test_a_lockstep_batch_gives_each_row_its_own_slot():
    """Rows of one batch decode in turn: sharing one slot's cache would mix them."""
    examples = load_dataset("test", limit=6)
    with create_engine(EngineConfig(model="marian-en-de", engine="torch-static", threads=2)) as eng:
        alone = [eng.stream(request_of(ex)).run().token_ids for ex in examples]
        together = [g.token_ids for g in eng.generate([request_of(ex) for ex in examples])]
        assert sum(len(v) for v in eng._slots.values()) >= 2
    assert together == alone


def test_fp8_needs_cuda_and_int8_runs_on_cpu():
    with pytest.raises(ConfigError, match="fp8 on engine torch-static needs device cuda"):
        create_engine(EngineConfig(engine="torch-static", precision="fp8"), load=False)
    examples = load_dataset("test", limit=8)
    with create_engine(EngineConfig(model="marian-en-de", engine="torch-static", precision="int8")) as eng:
        from testbed.engines.torch.qlinear import Int8Linear

        assert sum(isinstance(m, Int8Linear) for m in eng.model.modules()) > 0
        outs = [eng.stream(request_of(ex)).run() for ex in examples]
    assert all(o.finish_reason == "eos" and o.text for o in outs)
