"""In-process scenarios: failures are recorded with their error, warm-up is flagged."""

from __future__ import annotations

from testbed.client.inproc import singlestream
from testbed.config import EngineConfig
from testbed.datasets import Example
from testbed.engines.fake.engine import FakeEngine
from testbed.metrics import summary as S


class BrokenEngine(FakeEngine):
    """Fails on the third token of any input containing 'boom'."""

    def _decode(self, prepared):
        words = [self.tokenizer.words[i] for i in prepared.input_ids]
        for k, item in enumerate(super()._decode(prepared)):
            if "boom" in words and k == 3:
                raise RuntimeError("kernel exploded")
            yield item


def test_failures_are_recorded_never_zero_ms(clock):
    eng = BrokenEngine(EngineConfig(engine="fake"), clock=clock).load()
    examples = [Example("1", "a b c"), Example("2", "x boom y z"), Example("3", "   "), Example("4", "d e")]
    recs = singlestream(eng, examples, warmup=2)
    assert [r.warmup for r in recs] == [True, True, False, False, False, False]
    live = recs[2:]
    assert [r.ok for r in live] == [True, False, False, True]
    assert "kernel exploded" in live[1].error and "empty input" in live[2].error
    assert S.ttft_ms(live[1]) is None and S.e2e_ms(live[2]) is None
    summ = S.summarize(recs).to_dict()
    assert summ["completed"] == 2 and summ["failed"] == 2 and summ["warmup_excluded"] == 2
    assert summ["p99_e2el_ms"] > 0
