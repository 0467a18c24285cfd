"""Conversion of a Hugging Face checkpoint (optionally pruned) to a CTranslate2 model, cached.

:func:`ct2_model_dir` (the ``ctranslate2`` builder of :data:`testbed.artifacts.BUILDERS`) returns
the converted model for (model, precision, pruning), building it once into the artefact cache
(:func:`testbed.artifacts.build`, kind ``ctranslate2``) with a key
that holds the checkpoint's content hash, the pruning spec, the CTranslate2 quantization, the
ctranslate2 and transformers versions and :data:`CONVERTER_VERSION`.

Marian is converted *exactly*: CTranslate2's stock Marian loader drops the ``<pad>`` row of the
vocabulary and starts the decoder from a zero embedding, which is what Marian-NMT does, but a
Hugging Face Marian model (like the embedded one) starts the decoder from the ``<pad>``
embedding, which is not zero after training.  The loader here keeps ``<pad>`` and starts from
it; the engine then suppresses ``<pad>`` as an output, as ``generate()`` and the torch engine
do.  BART / mBART / BlenderBot go through CTranslate2's BART loader with the flags transformers 5
no longer puts on the config set first; BlenderBot-small has a loader of its own (its decoder's
embedding normalisation folded into the embedding table).  T5, M2M100 / NLLB and the
decoder-only models use CTranslate2's own loaders unchanged.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError
from testbed.registry import ModelInfo, content_hash, tokenizer_hash

# Bump when a conversion with the same key would produce something different.
CONVERTER_VERSION = 2
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


# model_type -> pre-norm flag for the BART-like loaders (transformers 5 configs dropped
# ``normalize_before``, which CTranslate2's BartLoader reads)
_PRE_NORM = {"bart": False, "mbart": True, "blenderbot": True}


def _bart_like_loader(base: Any, architecture: str, pre_norm: bool) -> Any:
    """A BART-family loader that works under transformers 5 and starts where the checkpoint says.

    ``normalize_before`` / ``normalize_embedding`` are set on the config object before the stock
    loader reads them (layer-norm-after-embedding exactly when the model has that module), and the
    decoder start token is the checkpoint's own ``decoder_start_token_id`` (the stock mBART loader
    drops it and expects it in the target prefix).
    """

    class Loader(base):  # type: ignore[misc,valid-type]
        @property
        def architecture_name(self) -> str:
            return architecture

        def get_model_spec(self, model: Any) -> Any:
            model.config.normalize_before = pre_norm
            model.config.normalize_embedding = hasattr(model.model.encoder, "layernorm_embedding")
            return base.get_model_spec(self, model)

        def set_config(self, config: Any, model: Any, tokenizer: Any) -> None:
            base.set_config(self, config, model, tokenizer)
            config.decoder_start_token = tokenizer.convert_ids_to_tokens(model.config.decoder_start_token_id)

    return Loader()


def _blenderbot_small_loader() -> Any:
    """BlenderBot-small, exactly.  Its decoder normalises the token embedding *before* adding the
    position embedding (``LN(E[x]) + P[t]``; the encoder, like BART, normalises the sum), which
    CTranslate2's decoder cannot express.  The normalisation acts on each token's row alone, so it
    is folded into the decoder's embedding table (``E' = LN(E)``, no embedding scale, no
    layernorm_embedding in the decoder spec); the output projection keeps the original weights.
    """
    import torch
    from ctranslate2.converters.transformers import _SUPPORTED_ACTIVATIONS, BartLoader
    from ctranslate2.specs import transformer_spec

    class BlenderbotSmallLoader(BartLoader):  # type: ignore[misc]
        @property
        def architecture_name(self) -> str:
            return "BlenderbotSmallForConditionalGeneration"

        def get_model_spec(self, model: Any) -> Any:
            c = model.config
            act = _SUPPORTED_ACTIVATIONS[c.activation_function]
            spec = transformer_spec.TransformerSpec(
                transformer_spec.TransformerEncoderSpec(c.encoder_layers, c.encoder_attention_heads, pre_norm=False,
                                                        activation=act, layernorm_embedding=True),
                transformer_spec.TransformerDecoderSpec(c.decoder_layers, c.decoder_attention_heads, pre_norm=False,
                                                        activation=act, layernorm_embedding=False))
            self.set_encoder(spec.encoder, model.model.encoder)
            self.set_decoder(spec.decoder, model.model.decoder)
            self.set_linear(spec.decoder.projection, model.lm_head)
            bias = getattr(model, "final_logits_bias", None)
            if bias is not None and bias.nonzero().numel() != 0:
                spec.decoder.projection.bias = bias.squeeze()
            return spec

        def set_config(self, config: Any, model: Any, tokenizer: Any) -> None:
            BartLoader.set_config(self, config, model, tokenizer)

        def set_common_layers(self, spec: Any, module: Any) -> None:
            decoder: Any = getattr(self, "_decoder", None)
            if module is not decoder:
                BartLoader.set_common_layers(self, spec, module)
                return
            spec.scale_embeddings = 1.0  # the decoder does not scale its embeddings
            self.set_position_encodings(spec.position_encodings, module.embed_positions)
            with torch.no_grad():
                spec.embeddings.weight = module.layernorm_embedding(module.embed_tokens.weight).detach().clone()

        def set_decoder(self, spec: Any, decoder: Any) -> None:
            self._decoder = decoder
            BartLoader.set_decoder(self, spec, decoder)

    return BlenderbotSmallLoader()


def _m2m100_loader() -> Any:
    """M2M100 / NLLB with the vocabulary read id by id from the tokenizer.

    The stock loader appends the tokenizer's ``additional_special_tokens`` (the language codes),
    which a transformers 5 M2M100 tokenizer no longer lists, so the vocabulary came out shorter
    than the embedding matrix.  Here token ``i`` is ``convert_ids_to_tokens(i)`` for every row of
    the embedding; rows without a token of their own (fairseq's made-up words) get a placeholder.
    """
    from ctranslate2.converters.transformers import M2M100Loader

    class ExactM2M100Loader(M2M100Loader):  # type: ignore[misc]
        def get_vocabulary(self, model: Any, tokenizer: Any) -> Any:
            tokens: list[str] = []
            seen: set[str] = set()
            for i in range(model.config.vocab_size):
                t = tokenizer.convert_ids_to_tokens(i)
                if not isinstance(t, str) or t in seen:
                    t = f"madeupword{i}"
                seen.add(t)
                tokens.append(t)
            return tokens

    return ExactM2M100Loader()


def loader_for(config: Any, where: str) -> Any:
    """The CTranslate2 loader for a transformers config object (ConfigError if there is none)."""
    from ctranslate2.converters.transformers import _MODEL_LOADERS, BartLoader, MBartLoader

    cname = type(config).__name__
    mt = getattr(config, "model_type", "")
    if cname == "MarianConfig":
        return _exact_marian_loader()
    if mt == "blenderbot-small":
        return _blenderbot_small_loader()
    if mt == "m2m_100":
        return _m2m100_loader()
    if mt in _PRE_NORM:
        base, arch = {"bart": (BartLoader, "BartForConditionalGeneration"),
                      "mbart": (MBartLoader, "MBartForConditionalGeneration"),
                      "blenderbot": (BartLoader, "BlenderbotForConditionalGeneration")}[mt]
        return _bart_like_loader(base, arch, _PRE_NORM[mt])
    loader = _MODEL_LOADERS.get(cname)
    if loader is None:
        raise ConfigError("model", where, "a checkpoint CTranslate2 can convert: "
                          + ", ".join(sorted(_MODEL_LOADERS)), f"({cname} has no CTranslate2 converter)")
    return loader


def convert_checkpoint(src: Path, out: Path, quantization: str) -> dict[str, Any]:
    """Convert the Hugging Face checkpoint in ``src`` into ``out`` (which must not exist or be empty)."""
    import ctranslate2
    import torch
    import transformers
    from ctranslate2.converters.transformers import TransformersConverter

    cfg = transformers.AutoConfig.from_pretrained(src)
    cname = type(cfg).__name__
    loader = loader_for(cfg, str(src))

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
    key = {"source": model_info.name, "model_hash": content_hash(ckpt), "tokenizer_hash": tokenizer_hash(ckpt),
           "pruning": spec_str(pruning),
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
