"""The engine interface and its streaming adapter, on the model-free fake engine."""

from __future__ import annotations

import pytest

from testbed.config import EngineConfig
from testbed.engines.base import Detokenizer, GenerationRequest
from testbed.engines.registry import create_engine, engine_class
from testbed.errors import ConfigError, InputError, MissingExtraError
from testbed.metrics import summary as S


def fake(clock=None, **kw):
    cfg = EngineConfig(engine="fake", **kw)
    return create_engine(cfg, clock=clock) if clock else create_engine(cfg)


def test_stream_timestamps_come_from_the_engine_clock(clock):
    eng = fake(clock)
    s = eng.stream("one two three").run()
    assert s.token_ids[-1] == 0 and s.finish_reason == "eos"
    assert s.text == "one two three"
    # clock reads: start, decode start, encoder done, 4 tokens, end -> 1 ms apart
    rec = s.record()
    assert rec.send_ns == rec.schedule_ns == s.start_ns
    assert rec.decode_start_ns - rec.send_ns == 1_000_000
    assert rec.encoder_done_ns - rec.send_ns == 2_000_000
    assert rec.chunk_ns == [s.start_ns + k * 1_000_000 for k in (3, 4, 5, 6)]
    assert S.ttft_ms(rec) == pytest.approx(3.0)
    assert S.e2e_ms(rec) == pytest.approx(6.0)
    assert S.tpot_ms(rec) == pytest.approx(1.0)
    assert S.encoder_ms(rec) == pytest.approx(1.0)  # from the encoder's start, not from the send
    assert S.e2e_ms(rec) - S.ttft_ms(rec) == pytest.approx(sum(S.itl_ms(rec)))
    assert rec.n_out == 4 and rec.n_in == 4


def test_streamed_pieces_concatenate_to_the_decoded_text():
    # (stream == batch is pinned on the real engines, where it can fail: tests/integration; on the
    # fake engine it holds by construction)
    eng = fake()
    for text in ["a b c", "the quick brown fox", "x"]:
        s = eng.stream(text).run()
        assert "".join(e.text for e in s.events) == s.text == text


def test_max_new_tokens_stops_with_length():
    eng = fake(max_new_tokens=2)
    s = eng.stream("a b c d").run()
    assert len(s.token_ids) == 2 and s.finish_reason == "length"
    s2 = eng.stream(GenerationRequest(text="a b c d", max_new_tokens=3)).run()
    assert len(s2.token_ids) == 3


def test_close_cancels_decoding():
    eng = fake()
    s = eng.stream("a b c d e f")
    it = iter(s)
    next(it)
    s.close()
    assert s.finish_reason == "cancelled" and len(s.events) == 1
    assert s.end_ns is not None


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_empty_input_is_refused(bad):
    eng = fake()
    with pytest.raises(InputError, match="empty"):
        eng.stream(GenerationRequest(text=bad))


def test_overlong_input_truncated_with_warning_or_refused():
    long = " ".join(f"w{i}" for i in range(300))
    s = fake(max_input_tokens=10).stream(long).run()
    assert s.n_in == 10 and s.warnings and "truncated to 10" in s.warnings[0]
    assert s.record().extra["warnings"] == list(s.warnings)
    with pytest.raises(InputError, match="at most 10"):
        fake(max_input_tokens=10, on_overflow="refuse").stream(long)


def test_chat_messages_to_translation_model_refused():
    with pytest.raises(InputError, match="translation model"):
        fake().stream([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("field", "kw", "allowed"),
    [("precision", {"precision": "fp4"}, "fp32"), ("device", {"device": "tpu"}, "cpu"),
     ("threads", {"threads": 0}, "positive"), ("max_new_tokens", {"max_new_tokens": 0}, "[1, 4096]")],
)
def test_bad_config_names_field_and_allowed_values(field, kw, allowed):
    with pytest.raises(ConfigError) as exc:
        EngineConfig(**kw)
    assert field in str(exc.value) and allowed in str(exc.value)


def test_unknown_engine_lists_known_ones():
    with pytest.raises(ConfigError, match="torch"):
        engine_class("tensorflow")


def test_precision_device_constraints_from_capabilities():
    from testbed.engines.torch.engine import TorchEngine

    with pytest.raises(ConfigError, match="needs device cuda"):
        TorchEngine.capabilities.check("torch", EngineConfig(precision="fp16"))
    with pytest.raises(ConfigError, match="needs device cpu"):
        TorchEngine.capabilities.check("torch", EngineConfig(precision="int8", device="cuda"))


def test_missing_extra_names_the_extra(monkeypatch):
    from testbed.engines import registry

    monkeypatch.setitem(registry.ENGINES, "ghost", registry.EngineEntry("x:Y", "onnx", "no_such_module_xyz", ""))
    with pytest.raises(MissingExtraError, match=r"testbed\[onnx\]"):
        engine_class("ghost")
    ok, why = registry.is_available("ghost")
    assert not ok and "testbed[onnx]" in why


class _SpmLikeTokenizer:
    """Decodes like SentencePiece: '▁' marks a space; a leading space is dropped."""

    pieces = {1: "▁Hallo", 2: "▁Wel", 3: "t", 4: "!", 5: "▁\u00e4", 6: "\ufffd"}

    def decode(self, ids, **_):
        return "".join(self.pieces[i] for i in ids).replace("▁", " ").lstrip(" ")


def test_detokenizer_pieces_rebuild_the_text():
    d = Detokenizer(_SpmLikeTokenizer())
    pieces = [d.add(i) for i in (1, 2, 3, 4, 5)]
    assert pieces == ["Hallo", " Wel", "t", "!", " ä"]
    assert "".join(pieces) == _SpmLikeTokenizer().decode([1, 2, 3, 4, 5])


def test_detokenizer_holds_back_incomplete_characters():
    d = Detokenizer(_SpmLikeTokenizer())
    assert d.add(1) == "Hallo"
    assert d.add(6) == ""  # U+FFFD: an incomplete UTF-8 sequence is not emitted


def test_pruning_spec_is_validated_and_engines_without_pruning_refuse_it():
    import pytest

    from testbed.config import EngineConfig, parse_pruning
    from testbed.engines.registry import create_engine
    from testbed.errors import ConfigError

    assert parse_pruning("none") is None
    assert parse_pruning("structured:0.25") == ("structured", 0.25)
    for bad in ("magnitude:0.5", "unstructured:1.5", "structured:", "structured:x"):
        with pytest.raises(ConfigError, match="pruning"):
            EngineConfig(pruning=bad)
    assert EngineConfig(pruning="unstructured:0.5").label() == "torch/fp32/unstructured:0.5/cpu"
    with pytest.raises(ConfigError, match="does not run pruned models"):
        create_engine(EngineConfig(model="fake-en-de", engine="fake", pruning="unstructured:0.5"))


class _SilentEncoderEngine:
    """Mixin: a seq2seq engine that, like CTranslate2, does not report the end of its encoder pass."""

    def _decode(self, prepared):
        yield from self._echo(prepared)


def _batch_engine(report_encoder: bool, clock=None):
    from testbed.engines.fake.engine import FakeEngine

    cls = FakeEngine if report_encoder else type("SilentFake", (_SilentEncoderEngine, FakeEngine), {})
    eng = cls(EngineConfig(engine="fake"), **({"clock": clock} if clock else {}))
    return eng.load()


def test_default_batched_decoding_reports_no_encoder_time_for_an_engine_that_has_none():
    eng = _batch_engine(report_encoder=False)
    bs = eng.stream_batch([eng.prepare(GenerationRequest(text=t)) for t in ("a b", "c d e")])
    for _ in bs:
        pass
    assert [r.encoder_done_ns for r in bs.rows] == [None, None]
    assert all(r.decode_start_ns is not None for r in bs.rows)
    assert [r.text for r in bs.rows] == ["a b", "c d e"]


def test_default_batched_decoding_marks_the_encoder_end_before_any_token(clock):
    eng = _batch_engine(report_encoder=True, clock=clock)
    prepared = [eng.prepare(GenerationRequest(text=t)) for t in ("a b", "c d e")]
    bs = eng.stream_batch(prepared)
    events = list(bs)
    starts = {r.decode_start_ns for r in bs.rows}
    assert len(starts) == 1  # the batch's rows start decoding together
    for r in bs.rows:
        assert r.decode_start_ns < r.encoder_done_ns < r.events[0].t_ns
    assert [r.text for r in bs.rows] == ["a b", "c d e"]
    assert len(events) == sum(len(r.events) for r in bs.rows)
