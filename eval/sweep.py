"""Sweep files: a TOML description of what to measure, validated before anything runs.

A sweep names one model, one test set and the decoding parameters shared by every
configuration, then a list (or matrix) of serving configurations.  Shape::

    model = "marian-en-de"          # registry name, local directory or hub id
    dataset = "test"                # test | dev | chat | a .tsv / .txt / .jsonl path
    # references = "refs.txt"       # only for a .txt dataset: one reference per line
    max_new_tokens = 128            # greedy decoding, the same for every configuration
    seed = 0                        # the bootstrap's seed

    [offline]
    num_examples = 1200             # the first N examples (omit: the whole set); the BLEU set
    warmup_batches = 1              # batches run first and excluded (their time is reported)
    [singlestream]
    num_requests = 64               # the first N examples, one at a time, after the warm-up
    warmup = 5
    interleave = true               # rounds across configurations (false: one configuration after another)
    [accuracy]
    bootstrap_samples = 1000
    gate_metric = "bleu"            # bleu | chrf
    gate_reference = "references"   # references (human) | fp32 (the fp32 reference's outputs: chat)
    gate_ratio = 0.99               # pass if score >= ratio x score(fp32) ...
    gate_length_ratio = [0.9, 1.1]  # ... and sum(N) / sum(N_fp32) lies in this interval
    divergence_examples = 64        # the first N also decoded at batch 1: batch divergence
    [reference]                     # the fp32 reference (defaults: engine torch, precision fp32)
    engine = "torch"
    [defaults]                      # applied to every configuration
    threads = 2
    batch = 32
    device = "cpu"

    [[configs]]                     # a list value expands to one configuration per value;
    engine = "torch"                # several lists expand to their cross product (a matrix)
    precision = ["fp32", "bf16", "int8"]

Configuration keys: ``engine``, ``precision``, ``pruning``, ``device``, ``threads`` (per engine
instance), ``batch`` (the Offline scenario's batch size), ``model`` (another model than the sweep's,
run on the same prompts and scored against the same references, but not gated: the gate compares a
configuration with the fp32 reference *of the same model*) and ``batching``: ``engine`` (default:
the engine's own ``generate`` over fixed batches), ``static`` or ``continuous`` (every request of
the Offline set through the server's scheduler at max batch ``batch``: what a served deployment
gets; ``continuous`` is refused for engines that cannot add rows to a running batch).  A bad key
or value raises :class:`SweepError` naming the file, the field, the value and what is allowed --
an engine that is not registered included (``engine = "vllm"``), and a test set that cannot be
read as one (not found, not a .tsv / .txt / .jsonl file, not UTF-8, malformed lines), all before
anything runs.  An engine that is registered but not installed is *not* an error: its
configurations are recorded as skipped with the reason (the extra to install) when the sweep runs,
and the sweep goes on -- so one sweep file serves every installation.  Its precision is then
checked by the engine itself (each engine declares its own precisions in its ``Capabilities``).

The fp32 reference configuration runs first; it is added to the list when it is not in it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from testbed.config import EngineConfig
from testbed.datasets import BUILTIN, Example, builtin_path, load_dataset
from testbed.errors import ConfigError, TestbedError

CONFIG_KEYS = ("engine", "precision", "pruning", "device", "threads", "batch", "batching", "model")
# how the Offline scenario forms its batches: the engine's own generate() over fixed batches ("engine"),
# or every request through the server's scheduler at max batch `batch` ("static" | "continuous")
BATCHING = ("engine", "static", "continuous")
TOP_KEYS = ("name", "description", "model", "src_lang", "tgt_lang", "dataset", "references", "max_new_tokens",
            "seed", "offline", "singlestream", "accuracy", "reference", "defaults", "configs")
TABLE_KEYS = {
    "offline": ("num_examples", "warmup_batches"),
    "singlestream": ("num_requests", "warmup", "interleave"),
    "accuracy": ("bootstrap_samples", "gate_metric", "gate_reference", "gate_ratio", "gate_bleu_ratio",
                 "gate_length_ratio", "divergence_examples"),
}
GATE_METRICS = ("bleu", "chrf")
GATE_REFERENCES = ("references", "fp32")
DEFAULT_BATCH = 16


class SweepError(TestbedError):
    """A sweep file that cannot run; the message names the file, the field, the value and what is allowed."""


@dataclass(frozen=True)
class ServingConfig:
    """One row of a sweep: an engine configuration plus the Offline batch size."""

    engine: str
    precision: str
    pruning: str
    device: str
    threads: int | None
    batch: int
    batching: str = "engine"
    model: str = ""  # another model than the sweep's (compared on the same prompts, not gated); "": the sweep's

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"engine": self.engine, "precision": self.precision, "pruning": self.pruning,
                             "device": self.device, "threads": self.threads, "batch": self.batch}
        if self.batching != "engine":  # rows of earlier sweeps (engine batches) keep their keys
            d["batching"] = self.batching
        if self.model:  # likewise: only rows of another model carry one
            d["model"] = self.model
        return d

    def label(self) -> str:
        pruned = f"/{self.pruning}" if self.pruning != "none" else ""
        threads = f"/t{self.threads}" if self.threads else ""
        served = f"/{self.batching}" if self.batching != "engine" else ""
        other = f"{self.model}:" if self.model else ""
        return f"{other}{self.engine}/{self.precision}{pruned}/{self.device}{threads}/b{self.batch}{served}"

    def engine_config(self, model: str, max_new_tokens: int, src_lang: str | None = None,
                      tgt_lang: str | None = None) -> EngineConfig:
        """The :class:`EngineConfig` (raises ConfigError for a value the config does not accept);
        ``model`` is the sweep's, used unless this configuration names its own."""
        return EngineConfig(model=self.model or model, engine=self.engine, precision=self.precision,
                            device=self.device, threads=self.threads, max_new_tokens=max_new_tokens,
                            pruning=self.pruning, src_lang=src_lang, tgt_lang=tgt_lang)


@dataclass(frozen=True)
class Sweep:
    path: str
    name: str
    model: str
    dataset: str
    references: str | None
    max_new_tokens: int
    seed: int
    offline_examples: int
    singlestream_requests: int
    warmup: int
    bootstrap_samples: int
    gate_ratio: float
    gate_length_ratio: tuple[float, float]
    reference: ServingConfig
    configs: tuple[ServingConfig, ...]  # the reference first
    examples: tuple[Example, ...] = field(repr=False)
    dataset_sha256: str = ""
    description: str = ""
    gate_metric: str = "bleu"
    gate_reference: str = "references"
    offline_warmup_batches: int = 1
    divergence_examples: int = 64
    interleave: bool = True
    src_lang: str | None = None  # the model's language options (mBART, M2M100, NLLB), for every row
    tgt_lang: str | None = None

    @property
    def offline_set(self) -> tuple[Example, ...]:
        return self.examples[: self.offline_examples]

    @property
    def singlestream_set(self) -> tuple[Example, ...]:
        return self.examples[: self.singlestream_requests]

    @property
    def divergence_set(self) -> tuple[Example, ...]:
        """The first examples of the Offline set, decoded at batch 1 as well (batch divergence)."""
        return self.examples[: min(self.divergence_examples, self.offline_examples)]

    @property
    def has_references(self) -> bool:
        return all(e.reference is not None for e in self.offline_set)

    @property
    def gated_against(self) -> str:
        """What the gate scores against: ``references``, or ``fp32`` (asked for, or no references)."""
        return self.gate_reference if self.has_references else "fp32"

    def settings(self) -> dict[str, Any]:
        """Everything shared by the configurations: the contents that make rows comparable."""
        return {
            "model": self.model, "dataset": self.dataset, "dataset_sha256": self.dataset_sha256,
            "references": self.references, "max_new_tokens": self.max_new_tokens, "decoding": "greedy",
            "seed": self.seed, "offline_examples": self.offline_examples,
            "singlestream_requests": self.singlestream_requests, "warmup": self.warmup,
            "interleave": self.interleave, "offline_warmup_batches": self.offline_warmup_batches,
            "bootstrap_samples": self.bootstrap_samples, "gate_metric": self.gate_metric,
            "gate_reference": self.gate_reference, "gate_ratio": self.gate_ratio,
            "gate_length_ratio": list(self.gate_length_ratio), "divergence_examples": len(self.divergence_set),
            "reference": self.reference.to_dict(),
            # only when set: the keys of sweeps without languages stay what they were (resume)
            **{k: v for k, v in (("src_lang", self.src_lang), ("tgt_lang", self.tgt_lang)) if v is not None},
        }

    @property
    def sweep_key(self) -> str:
        return _digest(self.settings())

    def key(self, cfg: ServingConfig) -> str:
        """Resume key of one configuration: its fields and the sweep's shared settings."""
        return _digest({"config": cfg.to_dict(), "sweep": self.sweep_key})


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def builtin_sweeps() -> list[str]:
    d = resources.files("testbed.eval").joinpath("sweeps")
    return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".toml"))


def resolve_sweep_path(name_or_path: str) -> Path:
    """A path, or the name of a sweep shipped in ``eval/sweeps`` (``default``, ``chat``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    builtin = resources.files("testbed.eval").joinpath("sweeps", f"{name_or_path}.toml")
    if not p.suffix and builtin.is_file():
        return Path(str(builtin))
    raise SweepError(f"sweep file {name_or_path!r} not found: give a path to a .toml file "
                     f"or one of the shipped sweeps: {', '.join(builtin_sweeps())}")


# ------------------------------------------------------------------------------- validation
def _err(path: str, where: str, value: Any, allowed: str) -> SweepError:
    return SweepError(f"{path}: {where} = {value!r} is not valid; allowed: {allowed}")


def _int(path: str, where: str, v: Any, lo: int = 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise _err(path, where, v, f"an integer >= {lo}")
    return v


def _table(path: str, doc: dict[str, Any], name: str) -> dict[str, Any]:
    t = doc.get(name, {})
    if not isinstance(t, dict):
        raise _err(path, name, t, "a table ([" + name + "])")
    allowed = TABLE_KEYS.get(name, CONFIG_KEYS)
    for k in t:
        if k not in allowed:
            raise SweepError(f"{path}: unknown key {name}.{k!r}; allowed in [{name}]: {', '.join(allowed)}")
    return t


def _config_values(path: str, where: str, entry: dict[str, Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for k, v in entry.items():
        if k not in CONFIG_KEYS:
            raise SweepError(f"{path}: unknown key {where}.{k!r}; allowed: {', '.join(CONFIG_KEYS)}")
        vals = v if isinstance(v, list) else [v]
        if not vals:
            raise _err(path, f"{where}.{k}", v, "a value or a non-empty list of values")
        for x in vals:
            if k in ("threads", "batch"):
                _int(path, f"{where}.{k}", x)
            elif not isinstance(x, str) or not x:
                raise _err(path, f"{where}.{k}", x, "a non-empty string")
        out[k] = vals
    return out


def _make_config(path: str, where: str, values: dict[str, Any], model: str, max_new: int,
                 langs: tuple[str | None, str | None] = (None, None)) -> ServingConfig:
    cfg = ServingConfig(
        engine=values.get("engine", "torch"), precision=values.get("precision", "fp32"),
        pruning=values.get("pruning", "none"), device=values.get("device", "cpu"),
        threads=values.get("threads"), batch=values.get("batch", DEFAULT_BATCH),
        batching=values.get("batching", "engine"),
        model="" if values.get("model", model) == model else values["model"],
    )
    if cfg.batching not in BATCHING:
        raise _err(path, f"{where}.batching", cfg.batching, ", ".join(BATCHING))
    from testbed.engines.registry import ENGINES, engine_class, is_available

    if cfg.engine not in ENGINES:
        raise _err(path, f"{where}.engine", cfg.engine, f"one of the registered engines: {', '.join(ENGINES)}")
    if not is_available(cfg.engine)[0]:
        return cfg  # skipped at run time with the extra to install; its own engine would judge its values
    caps = engine_class(cfg.engine).capabilities
    if cfg.batching == "continuous" and not caps.continuous:
        raise _err(path, f"{where}.batching", cfg.batching,
                   f"engine, static ({cfg.engine}: {caps.join_refusal or 'rows cannot join a running batch'})")
    try:
        ec = cfg.engine_config(model, max_new, *langs)
    except ConfigError as exc:
        raise SweepError(f"{path}: {where}: {exc}") from None
    try:
        engine_class(cfg.engine).capabilities.check(cfg.engine, ec)
    except ConfigError as exc:
        # pruning support arrives engine by engine: such a row is skipped with the engine's reason
        if exc.field != "pruning":
            raise SweepError(f"{path}: {where}: {exc}") from None
    return cfg


def _relative(name: str, base: Path) -> Path:
    """A relative path names a file beside the sweep file, or else one relative to the working directory."""
    p = Path(name)
    if p.is_absolute() or not (base / p).is_file():
        return p
    return base / p


def _dataset_hash(dataset: str) -> str:
    p = builtin_path(dataset) if dataset in BUILTIN else Path(dataset)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else ""


def load_sweep(name_or_path: str | Path) -> Sweep:
    """Read and validate a sweep file (also loads its test set); raises :class:`SweepError`."""
    p = resolve_sweep_path(str(name_or_path))
    path = str(p)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path}: not valid TOML ({exc})") from None
    return parse_sweep(doc, path)


def _examples(path: str, doc: dict[str, Any], dataset: str) -> tuple[list[Example], str, str | None]:
    """The test set with its references: loaded now, so a missing file or a count mismatch fails before
    anything runs.  Returns ``(examples, dataset path, references key)``."""
    base = Path(path).parent
    ds_path = dataset if dataset in BUILTIN else str(_relative(dataset, base))
    try:
        examples = load_dataset(ds_path)
    except TestbedError as exc:
        raise SweepError(f"{path}: dataset = {dataset!r}: {exc}") from None
    refs = doc.get("references")
    if refs is not None:
        if not isinstance(refs, str):
            raise _err(path, "references", refs, "a path to a text file with one reference per line")
        rp = _relative(refs, base)
        if not rp.is_file():
            raise SweepError(f"{path}: references = {refs!r}: file not found")
        lines = [ln.rstrip("\n") for ln in rp.read_text(encoding="utf-8").splitlines()]
        while lines and not lines[-1].strip():
            lines.pop()
        if len(lines) != len(examples):
            raise SweepError(f"{path}: references = {refs!r} has {len(lines)} lines but the dataset has "
                             f"{len(examples)} examples: they must pair one to one")
        examples = [Example(e.id, e.text, e.messages, r) for e, r in zip(examples, lines)]
    n_refs = sum(e.reference is not None for e in examples)
    if 0 < n_refs < len(examples):
        raise SweepError(f"{path}: dataset {dataset!r} has references for {n_refs} of its {len(examples)} "
                         "examples: give a reference for every example, or none")
    return examples, ds_path, refs


def _scenarios(path: str, doc: dict[str, Any], n_examples: int) -> dict[str, Any]:
    """The [offline] and [singlestream] tables, as :class:`Sweep` fields."""
    off = _table(path, doc, "offline")
    n_off = off.get("num_examples", n_examples)
    _int(path, "offline.num_examples", n_off)
    off_warm = _int(path, "offline.warmup_batches", off.get("warmup_batches", 1), lo=0)
    ss = _table(path, doc, "singlestream")
    n_ss = _int(path, "singlestream.num_requests", ss.get("num_requests", min(64, n_examples)))
    warmup = _int(path, "singlestream.warmup", ss.get("warmup", 5), lo=0)
    interleave = ss.get("interleave", True)
    if not isinstance(interleave, bool):
        raise _err(path, "singlestream.interleave", interleave, "true (rounds across configurations) or false")
    for where, n in (("offline.num_examples", n_off), ("singlestream.num_requests", n_ss)):
        if n > n_examples:
            raise _err(path, where, n, f"at most the dataset's {n_examples} examples")
    return {"offline_examples": n_off, "offline_warmup_batches": off_warm, "singlestream_requests": n_ss,
            "warmup": warmup, "interleave": interleave}


def _accuracy(path: str, doc: dict[str, Any], n_off: int) -> dict[str, Any]:
    """The [accuracy] table, as :class:`Sweep` fields."""
    acc = _table(path, doc, "accuracy")
    n_boot = _int(path, "accuracy.bootstrap_samples", acc.get("bootstrap_samples", 1000), lo=0)
    if "gate_ratio" in acc and "gate_bleu_ratio" in acc:
        raise SweepError(f"{path}: accuracy.gate_bleu_ratio is the old name of accuracy.gate_ratio: give one")
    ratio_key = "gate_bleu_ratio" if "gate_bleu_ratio" in acc else "gate_ratio"
    ratio = acc.get(ratio_key, 0.99)
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 < ratio <= 1:
        raise _err(path, f"accuracy.{ratio_key}", ratio, "a number in (0, 1], e.g. 0.99 (MLPerf) or 0.999")
    metric = acc.get("gate_metric", "bleu")
    if metric not in GATE_METRICS:
        raise _err(path, "accuracy.gate_metric", metric, ", ".join(GATE_METRICS))
    against = acc.get("gate_reference", "references")
    if against not in GATE_REFERENCES:
        raise _err(path, "accuracy.gate_reference", against,
                   "references (the human references) or fp32 (the fp32 reference's outputs)")
    n_div = _int(path, "accuracy.divergence_examples", acc.get("divergence_examples", min(64, n_off)), lo=0)
    lr = acc.get("gate_length_ratio", [0.9, 1.1])
    if (not isinstance(lr, list) or len(lr) != 2 or not all(isinstance(x, (int, float)) for x in lr)
            or not 0 < lr[0] <= 1 <= lr[1]):
        raise _err(path, "accuracy.gate_length_ratio", lr, "[low, high] with 0 < low <= 1 <= high, e.g. [0.9, 1.1]")
    return {"bootstrap_samples": n_boot, "gate_ratio": float(ratio), "gate_metric": metric,
            "gate_reference": against, "divergence_examples": n_div,
            "gate_length_ratio": (float(lr[0]), float(lr[1]))}


def _configs(path: str, doc: dict[str, Any], model: str, max_new: int,
             langs: tuple[str | None, str | None]) -> tuple[ServingConfig, list[ServingConfig]]:
    """The reference and the configurations (the reference first, duplicates dropped)."""
    defaults = _config_values(path, "defaults", _table(path, doc, "defaults"))
    for k, v in defaults.items():
        if len(v) != 1:
            raise _err(path, f"defaults.{k}", v, "one value (lists belong in [[configs]])")
    base_values = {k: v[0] for k, v in defaults.items()}
    base_values.setdefault("threads", os.cpu_count() or 1)  # explicit, so every row says what it ran with

    ref_vals = _config_values(path, "reference", _table(path, doc, "reference"))
    if any(len(v) != 1 for v in ref_vals.values()):
        raise SweepError(f"{path}: [reference] takes one value per key (it is one configuration)")
    ref_values = {**base_values, "engine": "torch", "precision": "fp32", **{k: v[0] for k, v in ref_vals.items()}}
    reference = _make_config(path, "reference", ref_values, model, max_new, langs)

    entries = doc.get("configs", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise _err(path, "configs", entries, "an array of tables ([[configs]])")
    if not entries:
        raise SweepError(f"{path}: the sweep has no configurations: add at least one [[configs]] table "
                         "(e.g. engine = \"torch\", precision = [\"fp32\", \"int8\"])")
    configs: list[ServingConfig] = [reference]
    for i, entry in enumerate(entries):
        where = f"configs[{i}]"
        vals = _config_values(path, where, entry)
        keys = list(vals)
        for combo in itertools.product(*(vals[k] for k in keys)):
            cfg = _make_config(path, where, {**base_values, **dict(zip(keys, combo))}, model, max_new, langs)
            if cfg not in configs:
                configs.append(cfg)
    return reference, configs


def parse_sweep(doc: dict[str, Any], path: str = "<sweep>") -> Sweep:
    for k in doc:
        if k not in TOP_KEYS:
            raise SweepError(f"{path}: unknown key {k!r}; allowed: {', '.join(TOP_KEYS)}")
    model = doc.get("model", "marian-en-de")
    if not isinstance(model, str) or not model.strip():
        raise _err(path, "model", model, "a registry name, a local directory or a hub id")
    dataset = doc.get("dataset", "test")
    if not isinstance(dataset, str) or not dataset:
        raise _err(path, "dataset", dataset, f"{', '.join(BUILTIN)} or a path to a .tsv, .txt or .jsonl file")
    max_new = doc.get("max_new_tokens", 128)
    if not isinstance(max_new, int) or isinstance(max_new, bool) or not 1 <= max_new <= 4096:
        raise _err(path, "max_new_tokens", max_new, "an integer in [1, 4096]")
    seed = doc.get("seed", 0)
    _int(path, "seed", seed, lo=0)
    examples, ds_path, refs = _examples(path, doc, dataset)
    scen = _scenarios(path, doc, len(examples))
    acc = _accuracy(path, doc, scen["offline_examples"])
    langs = _languages(path, doc, model)
    reference, configs = _configs(path, doc, model, max_new, langs)
    return Sweep(
        path=path, name=str(doc.get("name", Path(path).stem)), model=model, dataset=dataset, references=refs,
        max_new_tokens=max_new, seed=seed, reference=reference, configs=tuple(configs), examples=tuple(examples),
        dataset_sha256=_dataset_hash(ds_path), description=str(doc.get("description", "")), **scen, **acc,
        src_lang=langs[0], tgt_lang=langs[1],
    )


def _languages(path: str, doc: dict[str, Any], model: str) -> tuple[str | None, str | None]:
    """``src_lang`` / ``tgt_lang``: strings; for a local checkpoint, checked against its family and
    tokenizer now (a multilingual model needs ``tgt_lang``; other families refuse both).  A registry
    name or hub id is checked when its engine loads (the row is then skipped with the reason)."""
    langs = (doc.get("src_lang"), doc.get("tgt_lang"))
    for name, v in zip(("src_lang", "tgt_lang"), langs):
        if v is not None and (not isinstance(v, str) or not v.strip() or " " in v):
            raise _err(path, name, v, "a language code of the model's tokenizer (e.g. de, de_DE, deu_Latn), or unset")
    if Path(model).is_dir() and (Path(model) / "config.json").is_file():
        from testbed.spec import load_spec

        try:
            load_spec(Path(model), langs[0], langs[1])
        except ConfigError as exc:
            raise SweepError(f"{path}: {exc}") from None
    return langs
