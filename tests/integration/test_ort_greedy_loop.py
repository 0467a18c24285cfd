"""The whole greedy loop in one ONNX Runtime call (testbed.engines.onnxruntime.loop) on the real Marian model:
``generate`` decodes the same tokens as one run() per step, at batch 1 and in a batch whose rows end at
different steps (EOS, their own max_new_tokens, EOS masked below min_new_tokens), and the batch counts
the same padding.  Without the loop, ``steps()`` runs its steps in one Python loop until a row finishes
(``OrtBatch._host_steps``): the same tokens and padding again."""

from __future__ import annotations

import pytest

from testbed.config import EngineConfig
from testbed.datasets import load_dataset
from testbed.engines.base import GenerationRequest
from testbed.engines.onnxruntime.engine import OnnxRuntimeEngine

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow


def _engine(greedy_loop: bool) -> OnnxRuntimeEngine:
    cfg = EngineConfig(model="marian-en-de", engine="onnxruntime", threads=2)
    return OnnxRuntimeEngine(cfg, greedy_loop=greedy_loop).load()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def engines():
    loop, steps = _engine(True), _engine(False)
    yield loop, steps
    loop.close()
    steps.close()


def _requests(steps: OnnxRuntimeEngine, n: int) -> list[GenerationRequest]:
    texts = [ex.text for ex in load_dataset("test", limit=n)]
    plain = steps.generate(texts)
    reqs = []
    for i, (t, g) in enumerate(zip(texts, plain)):
        k = len(g.token_ids)
        if i % 3 == 1:  # EOS masked past the natural end, then the row's own limit ends it
            reqs.append(GenerationRequest(text=t, min_new_tokens=k + 2, max_new_tokens=k + 5))
        elif i % 3 == 2:  # cut before its EOS
            reqs.append(GenerationRequest(text=t, max_new_tokens=max(1, k - 3)))
        else:
            reqs.append(GenerationRequest(text=t))
    return reqs


def test_the_loop_is_used_only_where_asked(engines):
    loop, steps = engines
    assert loop.ort.loop is not None and loop.ort.loop_fits(loop.banned, loop.eos_token_ids)
    assert steps.ort.loop is None
    assert loop.describe()["greedy_loop"] is True and steps.describe()["greedy_loop"] is False


def test_loop_tokens_equal_one_run_per_step(engines):
    loop, steps = engines
    reqs = _requests(steps, 12)
    a, b = loop.generate(reqs), steps.generate(reqs)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.token_ids == y.token_ids, i
        assert x.finish_reason == y.finish_reason, i
        assert len(x.token_ids) <= (reqs[i].max_new_tokens or loop.config.max_new_tokens)
    for i in range(1, len(reqs), 3):  # no EOS before the minimum length
        assert len(a[i].token_ids) >= reqs[i].min_new_tokens
        assert not set(a[i].token_ids[: reqs[i].min_new_tokens]) & set(loop.eos_token_ids)
    for r in reqs[:3]:  # batch 1: the same tokens as the stream, which runs one step per token
        assert loop.generate([r])[0].token_ids == loop.stream(r).run().token_ids


def _drive(eng: OnnxRuntimeEngine, reqs: list[GenerationRequest],
           many: bool) -> tuple[dict[int, list[int]], tuple[int, int], int]:
    """Rows driven by hand through ``steps()`` (``many``) or ``step()``: each row's tokens, the batch's padding
    totals and the number of calls."""
    b = eng.open_batch()
    prepared = {i: eng.prepare(r) for i, r in enumerate(reqs)}
    b.admit(prepared)
    out: dict[int, list[int]] = {i: [t] for i, t in b.prefill().items()}
    live, calls = set(prepared), 0

    def done(i: int) -> bool:
        return out[i][-1] in eng.eos_token_ids or len(out[i]) >= prepared[i].max_new_tokens

    b.evict([i for i in list(live) if done(i)])
    live -= {i for i in live if done(i)}
    while live:
        got = b.steps() if many else {s: [t] for s, t in b.step().items()}
        calls += 1
        for i, toks in got.items():
            out[i] += toks
        ended = [i for i in live if done(i)]
        b.evict(ended)
        live -= set(ended)
    return out, (b.padding.total, b.padding.padded), calls


def test_loop_counts_the_padding_the_steps_count(engines):
    """Every row's tokens and the batch's padding totals equal the step-by-step batch's."""
    loop, steps = engines
    reqs = _requests(steps, 9)
    a, pad_a, calls_a = _drive(loop, reqs, True)
    s, pad_s, calls_s = _drive(steps, reqs, False)
    assert a == s
    assert pad_a == pad_s and pad_a[1] > 0
    assert calls_a < calls_s / 3  # several steps per call


def test_host_steps_equal_one_step_per_call(engines):
    """No loop: steps() runs until a row finishes (EOS or its own max_new_tokens), with the same tokens and
    padding as step() per call; a batch with a minimum length keeps one step per call (its EOS mask follows
    the driver's count)."""
    _, steps = engines
    reqs = [r for r in _requests(steps, 12) if not r.min_new_tokens]
    a, pad_a, calls_a = _drive(steps, reqs, True)
    s, pad_s, calls_s = _drive(steps, reqs, False)
    assert a == s
    assert pad_a == pad_s and pad_a[1] > 0
    assert calls_a <= len(reqs) < calls_s / 2  # a call ends when a row ends
    masked = _requests(steps, 6)
    (ma, _, calls_ma), (ms, _, calls_ms) = _drive(steps, masked, True), _drive(steps, masked, False)
    assert ma == ms
    assert calls_ma == calls_ms
