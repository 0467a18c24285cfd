"""Validation of an exported ONNX artefact: its greedy tokens and first-step logits (ONNX Runtime,
CPU, through the engine's runner) against the torch fp32 model, on :data:`VALIDATION_TEXTS`.

The fp32 export must match (identical greedy tokens, logits within 1e-3) or its build fails;
quantized artefacts record their agreement in the manifest.  The reference is the plainest
possible greedy loop (no cache, the full sequence recomputed per step).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from testbed.artifacts import ArtifactError
from testbed.engines.onnxruntime.contract import META

VALIDATION_TEXTS = (
    "Select the range of cells that you want to sort.",
    "Click OK to close the dialog.",
    "The selected text is copied to the clipboard.",
)


def prompt_ids(tok: Any, text: str, architecture: str) -> list[int]:
    """Token ids of a validation / calibration text: the source for seq2seq, else the chat prompt
    (the raw text for a decoder-only model without a chat template, such as GPT-2)."""
    if architecture == "seq2seq" or not getattr(tok, "chat_template", None):
        return [int(i) for i in tok(text)["input_ids"]]
    r: Any = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return [int(i) for i in (r["input_ids"] if isinstance(r, dict) or hasattr(r, "input_ids") else r)]


def _torch_greedy(model: Any, family: str, ids: list[int], steps: int, banned: list[int], start: int | None) -> tuple[
        list[int], Any]:
    """Greedy decoding without a cache (full recompute per step): the plainest possible reference."""
    import torch

    out: list[int] = []
    first = None
    with torch.no_grad():
        x = torch.tensor([ids])
        dec = torch.tensor([[start]]) if family == "seq2seq" else None
        for _ in range(steps):
            if family == "seq2seq":
                logits = model(input_ids=x, decoder_input_ids=dec).logits[:, -1, :].float()
            else:
                logits = model(input_ids=x).logits[:, -1, :].float()
            if banned:
                logits[:, banned] = float("-inf")
            if first is None:
                first = logits[0].numpy().copy()
            nxt = int(logits.argmax(-1))
            out.append(nxt)
            if family == "seq2seq":
                dec = torch.cat([dec, torch.tensor([[nxt]])], dim=1)  # type: ignore[list-item]
            else:
                x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
            if nxt in eos_of(model):
                break
    return out, first


def eos_of(model: Any) -> set[int]:
    e = model.config.eos_token_id
    return {e} if isinstance(e, int) else set(e or [])


def validate(art: Path, src: Path, model: Any, strict: bool = False, steps: int = 20) -> dict[str, Any]:
    """Greedy tokens and first-step logits of the artefact (ONNX Runtime, CPU) vs ``model``, the
    checkpoint ``src`` in torch fp32.

    ``strict`` (fp32): any token difference, or logits further apart than 1e-3, raises
    :class:`ArtifactError`.  Otherwise the agreement is reported in the manifest.
    """
    import numpy as np
    from transformers import AutoTokenizer

    from testbed.engines.onnxruntime.runner import OrtModel, SessionSettings

    meta = json.loads((art / META).read_text())
    family = meta["architecture"]
    tok = AutoTokenizer.from_pretrained(src)
    ort_model = OrtModel(art, SessionSettings())
    same, total, max_diff = 0, 0, 0.0
    for text in VALIDATION_TEXTS:
        ids = prompt_ids(tok, text, family)
        ref, ref_logits = _torch_greedy(model, family, ids, steps, meta["banned"], meta.get("decoder_start_token_id"))
        got: list[int] = []
        arr = np.array([ids], dtype=np.int64)
        for item in ort_model.greedy(arr, np.ones_like(arr), len(ref), meta["banned"], return_logits=True):
            if isinstance(item, str):
                continue
            nxt, logits = item
            if not got:
                finite = np.isfinite(ref_logits)
                max_diff = max(max_diff, float(np.abs(logits[0][finite] - ref_logits[finite]).max()))
            got.append(int(nxt[0]))
        total += 1
        same += int(got == ref)
        if strict and got != ref:
            raise ArtifactError(f"{art}: ONNX greedy output differs from torch fp32 on {text!r}: {got} vs {ref}")
    if strict and max_diff > 1e-3:
        raise ArtifactError(f"{art}: first-step logits differ from torch fp32 by up to {max_diff:.2e} (> 1e-3)")
    return {"sentences": total, "identical_greedy_outputs": same, "max_abs_logit_diff_step1": round(max_diff, 6)}


def validate_if_possible(art: Path, src: Path) -> dict[str, Any]:
    """fp16 graphs are for GPU providers: validated only where CUDA is available."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"skipped": "fp16 graphs are validated on a CUDA provider; none is available here"}
    return {"skipped": "validated by the engine's gpu tests (tests/integration/test_onnxruntime_engine.py -m gpu)"}
