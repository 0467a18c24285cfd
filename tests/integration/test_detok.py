"""Token ids to text (testbed.engines.detok): the direct paths for Marian's and BlenderBot-small's tokenizers give
the tokenizer's own decode on every window a stream decodes, and a direct path that disagrees on a probe is not
used."""

from __future__ import annotations

import pytest

from testbed.datasets import load_dataset
from testbed.engines.detok import Detokenizer, hf_decoder, text_decoder
from testbed.registry import resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def marian_tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model("marian-en-de").local_path())


def _targets(tok, n: int) -> list[list[int]]:
    """Token ids of the test set's reference translations as the target side encodes them."""
    refs = [ex.reference for ex in load_dataset("test", limit=n)]
    return [list(tok(text_target=r)["input_ids"]) for r in refs]


def test_marian_direct_path_decodes_every_window_as_the_tokenizer(marian_tok):
    fast, slow = text_decoder(marian_tok), hf_decoder(marian_tok)
    assert fast.__qualname__.startswith("_direct")  # the direct path is the one in use
    specials = sorted(marian_tok.all_special_ids)
    windows = 0
    for ids in _targets(marian_tok, 60):
        ids = ids[:3] + specials + ids[3:]  # special ids inside the sequence are skipped alike
        for i in range(len(ids)):
            for j in range(i, len(ids) + 1):
                assert fast(ids[i:j]) == slow(ids[i:j]), ids[i:j]
                windows += 1
    assert windows > 10_000
    past = [5, len(marian_tok) + 5]  # an id past the table: the tokenizer's own answer (text or error)
    assert _outcome(fast, past) == _outcome(slow, past)


def _outcome(dec, ids: list[int]) -> tuple[str, str]:
    try:
        return "text", dec(ids)
    except Exception as exc:  # noqa: BLE001
        return "error", type(exc).__name__


def test_dialogue_direct_path_decodes_as_the_tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model("chitchat-bbs-10m").local_path())
    fast, slow = text_decoder(tok), hf_decoder(tok)
    assert fast.__qualname__.startswith("_direct")
    for ex in load_dataset("chat", limit=40):
        text = " ".join(m["content"] for m in ex.messages or ())
        ids = list(tok(text)["input_ids"])[:40] + sorted(tok.all_special_ids)
        for i in range(len(ids)):
            for j in range(i, min(len(ids), i + 12) + 1):
                assert fast(ids[i:j]) == slow(ids[i:j]), ids[i:j]


def test_streamed_pieces_rebuild_the_text_with_either_decoder(marian_tok):
    fast, slow = text_decoder(marian_tok), hf_decoder(marian_tok)
    for ids in _targets(marian_tok, 20):
        a, b = Detokenizer(marian_tok, fast), Detokenizer(marian_tok)
        pa, pb = [a.add(i) for i in ids], [b.add(i) for i in ids]
        assert pa == pb
        assert "".join(pa) == slow(ids)


def test_a_direct_path_that_disagrees_on_a_probe_is_not_used(marian_tok, monkeypatch):
    own = type(marian_tok).decode

    def decode(self, ids, **kw):  # the tokenizer's output changes (another transformers version, say)
        return own(self, ids, **kw).upper()

    monkeypatch.setattr(type(marian_tok), "decode", decode)
    dec = text_decoder(marian_tok)
    assert not dec.__qualname__.startswith("_direct")
    ids = _targets(marian_tok, 1)[0]
    assert dec(ids) == own(marian_tok, ids, skip_special_tokens=True).upper()
