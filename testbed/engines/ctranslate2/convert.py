"""Conversion of a Hugging Face checkpoint (optionally pruned) to a CTranslate2 model, cached.

:func:`ct2_model_dir` returns the converted model for (model, precision, pruning), building it
once into the artefact cache (:func:`testbed.artifacts.build`, kind ``ctranslate2``) with a key
that holds the checkpoint's content hash, the pruning spec, the CTranslate2 quantization, the
ctranslate2 and transformers versions and :data:`CONVERTER_VERSION`.

Marian is converted *exactly*: CTranslate2's stock Marian loader drops the ``<pad>`` row of the
vocabulary and starts the decoder from a zero embedding, which is what Marian-NMT does, but a
Hugging Face Marian model (like the embedded one) starts the decoder from the ``<pad>``
embedding, which is not zero after training.  The loader here keeps ``<pad>`` and starts from
it; the engine then suppresses ``<pad>`` as an output, as ``generate()`` and the torch engine
do.  Decoder-only models use CTranslate2's own loaders unchanged.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError
from testbed.registry import ModelInfo, content_hash

# Bump when a conversion with the same key would produce something different.
CONVERTER_VERSION = 1
# testbed precision -> CTranslate2 quantization (weights) and compute type (the same name)
QUANTIZATION = {"fp32": "float32", "int8": "int8", "fp16": "float16", "bf16": "bfloat16",
                "int8_float16": "int8_float16"}


def _exact_marian_loader() -> Any:
    from ctranslate2.converters.transformers import BartLoader, MarianMTLoader

    class ExactMarianLoader(MarianMTLoader):  # type: ignore[misc]
        """Marian as Hugging Face runs it: decoder starts from the ``<pad>`` embedding."""

        def get_model_spec(self, model: Any) -> Any:
            model.config.normalize_before = False
            model.config.normalize_embedding = False
            return BartLoader.get_model_spec(self, model)  # keeps the <pad> row

        def set_config(self, config: Any, model: Any, tokenizer: Any) -> None:
            config.eos_token = tokenizer.eos_token
            config.unk_token = tokenizer.unk_token
            config.decoder_start_token = tokenizer.convert_ids_to_tokens(model.config.decoder_start_token_id)

        def set_decoder(self, spec: Any, decoder: Any) -> None:
            BartLoader.set_decoder(self, spec, decoder)  # start_from_zero_embedding stays False

        def get_vocabulary(self, model: Any, tokenizer: Any) -> Any:
            return BartLoader.get_vocabulary(self, model, tokenizer)  # keeps <pad>

    return ExactMarianLoader()


def convert_checkpoint(src: Path, out: Path, quantization: str) -> dict[str, Any]:
    """Convert the Hugging Face checkpoint in ``src`` into ``out`` (which must not exist or be empty)."""
    import ctranslate2
    import torch
    import transformers
    from ctranslate2.converters.transformers import _MODEL_LOADERS, TransformersConverter

    cfg = transformers.AutoConfig.from_pretrained(src)
    cname = type(cfg).__name__
    loader = _exact_marian_loader() if cname == "MarianConfig" else _MODEL_LOADERS.get(cname)
    if loader is None:
        raise ConfigError("model", str(src), "a checkpoint CTranslate2 can convert: "
                          + ", ".join(sorted(_MODEL_LOADERS)), f"({cname} has no CTranslate2 converter)")

    class Converter(TransformersConverter):  # type: ignore[misc]
        def _load(self) -> Any:
            with torch.no_grad():
                model_class = getattr(transformers, loader.architecture_name)
                model = model_class.from_pretrained(src, dtype=torch.float32)  # exact: no fp16 detour
                tok = transformers.AutoTokenizer.from_pretrained(src)
                return loader(model, tok)

    Converter(str(src)).convert(str(out), quantization=quantization, force=True)
    return {"ctranslate2_config": cname, "loader": type(loader).__name__, "quantization": quantization,
            "ctranslate2_version": ctranslate2.__version__}


def ct2_model_dir(
    model_info: ModelInfo, precision: str, pruning: str = "none", *, force: bool = False,
    root: Path | None = None, log: Callable[[str], None] | None = None,
) -> Path:
    """The CTranslate2 model of ``model_info`` (pruned by ``pruning``) quantized for ``precision``."""
    import ctranslate2
    import transformers

    from testbed import artifacts
    from testbed.prune import checkpoint_dir, spec_str

    if precision not in QUANTIZATION:
        raise ConfigError("precision", precision, ", ".join(QUANTIZATION), "(CTranslate2 conversion)")
    quant = QUANTIZATION[precision]
    ckpt = checkpoint_dir(model_info, pruning)
    key = {"source": model_info.name, "model_hash": content_hash(ckpt), "pruning": spec_str(pruning),
           "quantization": quant, "ctranslate2": ctranslate2.__version__,
           "transformers": transformers.__version__, "converter_version": CONVERTER_VERSION}
    say = log or (lambda m: print(m, file=sys.stderr))

    def builder(tmp: Path) -> dict[str, Any]:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        say(f"converting {model_info.name} ({spec_str(pruning)}) to CTranslate2 {quant} ...")
        out = tmp / "model"
        info = convert_checkpoint(ckpt, out, quant)
        for f in out.iterdir():
            f.rename(tmp / f.name)
        out.rmdir()
        (tmp / "source.json").write_text(json.dumps({"checkpoint": str(ckpt), **key, **info}, indent=2))
        return {"source_checkpoint": str(ckpt), **info}

    name = f"{model_info.name}-{precision}" + ("" if spec_str(pruning) == "none" else f"-{spec_str(pruning)}")
    return artifacts.build("ctranslate2", name.replace(":", "-"), key, builder, force=force, root=root, log=log)


def export_cached(model: str, precision: str, pruning: str = "none", force: bool = False) -> Path:
    """``testbed export --format ctranslate2``: the cached CTranslate2 model (built if needed)."""
    from testbed.registry import resolve_model

    return ct2_model_dir(resolve_model(model), precision, pruning, force=force)
