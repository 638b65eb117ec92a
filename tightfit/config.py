"""The pipeline configuration file (YAML): model, data, fine-tuning, the variant set, budgets, profiles.

One file says what ``tightfit run`` builds and what it must fit::

    model: minilm
    dataset: rotten_tomatoes
    variants:
      - {variant: fp32, chain: fp32}
      - {variant: int8-dyn, chain: int8_dynamic}
    target: {memory: 400MiB, latency: 50ms, min_accuracy: 0.7}
    profiles:
      quick: {data: {limit: 256}, finetune: {epochs: 1}}

A profile is a partial config deep-merged over the base. Everything is validated when the file is read:
unknown methods (the known ones are listed), parameters out of range, negative budgets, a dataset file
without ``text``/``label`` columns, all become one ``ConfigError`` naming the field and the fix.
Loop items use the key ``variant`` (never ``name``: KFP refuses a loop item key called ``name``).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tightfit.assets import BUILTIN_MODELS, resolve_model_path
from tightfit.compress.build import default_variant_set
from tightfit.compress.registry import validate_chain
from tightfit.data import BUILTIN_DATASETS, load_dataset
from tightfit.errors import ConfigError, TightfitError, describe_validation_error
from tightfit.spec import PERSON, HardwareTarget, VariantSpec
from tightfit.train.config import CONFIG_ENV, MAX_TOKENS, FinetuneConfig

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
PROFILES = ("quick", "full")
UNKNOWN_KEY_HINT = "check the spelling; tightfit/configs/default.yaml lists every key"
SMALL_LIMIT = 64
"""A built-in dataset is loaded at config time only under this ``data.limit`` (it could starve a split)."""


class DataConfig(BaseModel):
    """How much of the dataset to use and how to split it."""

    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(default=None, description="rows per split (head of each shuffled split); None = all")
    validation: float = 0.1
    test: float = 0.2
    max_length: int = Field(default=64, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"data.limit must be positive, got {self.limit}")
        if not (0 < self.validation < 1 and 0 < self.test < 1 and self.validation + self.test < 1):
            raise ValueError(
                f"data.validation and data.test are fractions in (0, 1) summing below 1; got {self.validation}, {self.test}"
            )
        if self.max_length < 8:
            raise ValueError(f"data.max_length must be >= 8 tokens, got {self.max_length}")
        return self


class VariantItem(BaseModel):
    """One entry of the variant set: ``{variant: NAME, chain: SPEC}``."""

    model_config = ConfigDict(extra="forbid")

    variant: str
    chain: str

    def spec(self) -> VariantSpec:
        return VariantSpec.parse(self.chain, name=self.variant)


class MeasureSettings(BaseModel):
    """How the profiler measures each variant."""

    model_config = ConfigDict(extra="forbid")

    seq_len: int = Field(default=64, ge=8, le=MAX_TOKENS)
    quick: bool = False
    memory_subprocess: bool = True


class TrackingSettings(BaseModel):
    """MLflow experiment and registry names (tracking URI: flag, env MLFLOW_TRACKING_URI, or the run dir)."""

    model_config = ConfigDict(extra="forbid")

    experiment: str = "tightfit"
    registered_model: str = "tightfit-minilm"
    alias: str = "champion"


class DeploySettings(BaseModel):
    """Whether the chosen variant is deployed, and how (a Ray Serve plan + RayService manifest)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    namespace: str = "tightfit"


class ResourceSettings(BaseModel):
    """Task resources on a cluster (compiled into the IR; kfp.local ignores them)."""

    model_config = ConfigDict(extra="forbid")

    mlflow_secret: str | None = "tightfit-mlflow"
    pvc: str | None = None
    pvc_mount: str = "/data"
    tolerations: list[dict[str, str]] = Field(default_factory=list)
    gpu: bool = False


SHARED_WITH_FINETUNE = {"model": "model", "dataset": "dataset", "seed": "seed", "limit": "data.limit",
                        "max_length": "data.max_length", "experiment": "tracking.experiment"}
"""Fine-tune keys the pipeline file sets once, at the top level (value: where)."""


class PipelineConfig(BaseModel):
    """The whole configuration file after its profile has been applied."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = "minilm"
    kind: Literal["classifier", "causal_lm"] = "classifier"
    baseline: Literal["finetuned", "pretrained"] = Field(
        default="finetuned",
        description="finetuned: fine-tune the model on Ray Train first; pretrained: sweep it as it is (LMs)",
    )
    dataset: str = "rotten_tomatoes"
    seed: int = Field(default=0, ge=0, lt=2**32)
    profile: str = "full"
    data: DataConfig = Field(default_factory=DataConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    variants: list[VariantItem] = Field(default_factory=list)
    target: HardwareTarget = Field(default_factory=HardwareTarget)
    measure: MeasureSettings = Field(default_factory=MeasureSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    deploy: DeploySettings = Field(default_factory=DeploySettings)
    resources: ResourceSettings = Field(default_factory=ResourceSettings)

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        """``variants: default`` -> the default set for the model kind; the fine-tune section takes what the
        whole pipeline shares (model, dataset, seed, rows, tokens) from the top level only."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("variants") == "default":
            kind = data.get("kind", "classifier")
            data["variants"] = [{"variant": s.name, "chain": s.chain} for s in default_variant_set(kind)]
        finetune = data.get("finetune")
        if isinstance(finetune, dict):
            owned = sorted(set(finetune) & set(SHARED_WITH_FINETUNE))
            if owned:
                where = ", ".join(f"{key} -> {SHARED_WITH_FINETUNE[key]}" for key in owned)
                raise ValueError(f"finetune: set {where} at the top level of the file; the whole pipeline shares them")
        return data

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        self.finetune = self.finetune.model_copy(update={
            "model": self.model, "dataset": self.dataset, "seed": self.seed, "limit": self.data.limit,
            "max_length": self.data.max_length, "experiment": self.tracking.experiment,
        })
        if not self.variants:
            raise ValueError("variants: list at least one {variant: NAME, chain: SPEC} (or write 'variants: default')")
        seen: set[str] = set()
        for item in self.variants:
            if item.variant in seen:
                raise ValueError(f"variants: the name {item.variant!r} is used twice; give each variant its own name")
            seen.add(item.variant)
        return self

    def specs(self) -> list[VariantSpec]:
        return [item.spec() for item in self.variants]

    def loop_items(self) -> list[dict[str, str]]:
        """The variant set as KFP loop items (string values only; no key called ``name``)."""
        return [{"variant": i.variant, "chain": i.chain} for i in self.variants]

    def target_json(self) -> str:
        return self.target.model_dump_json(exclude_none=True)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_from_dict(raw: dict[str, Any], *, profile: str | None = None, source: str = "config") -> PipelineConfig:
    """Apply ``profile`` (from ``raw['profiles']``), validate the schema, the variant chains and the dataset."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys (model, dataset, variants, ...)")
    raw = dict(raw)
    profiles = raw.pop("profiles", None) or {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"{source}: 'profiles' must map a profile name to partial settings")
    chosen = profile or raw.get("profile") or "full"
    if chosen != "full" or chosen in profiles:
        if chosen not in profiles:
            known = ", ".join(sorted({*profiles, "full"}))
            raise ConfigError(f"{source}: unknown profile {chosen!r}; this file defines: {known}")
        override = profiles[chosen] or {}
        if not isinstance(override, dict):
            raise ConfigError(f"{source}: profile {chosen!r} must be a mapping of settings")
        raw = _deep_merge(raw, override)
    raw["profile"] = chosen
    try:
        config = PipelineConfig.model_validate(raw, context={PERSON: True})
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc, unknown_key_hint=UNKNOWN_KEY_HINT)}") from None
    except ConfigError as exc:  # raised by a unit parser or the registry inside a validator
        raise ConfigError(f"{source}: {exc}") from None
    _check_variants(config, source)
    _check_model(config.model, source)
    _check_dataset(config, source)
    return config


def _check_model(model: str, source: str) -> None:
    """A model path is checked before anything starts (config, tokenizer, weights readable)."""
    if model in BUILTIN_MODELS:
        return
    try:
        resolve_model_path(model)
    except TightfitError as exc:
        raise type(exc)(f"{source}: model: {exc}") from None


def _check_variants(config: PipelineConfig, source: str) -> None:

    for index, item in enumerate(config.variants):
        try:
            validate_chain(item.spec(), config.kind)
        except ConfigError as exc:
            raise ConfigError(f"{source}: variants[{index}] ({item.variant}, chain {item.chain!r}): {exc}") from None


def _check_dataset(config: PipelineConfig, source: str) -> None:
    """The dataset the run will split, checked before anything starts (``tightfit.data`` does the checking):
    a user file is read whole (encoding, columns, empty texts, labels, rows per split); a built-in dataset
    is only loaded when a small ``data.limit`` could starve a split."""
    dataset, data = config.dataset, config.data
    if dataset in BUILTIN_DATASETS:
        if data.limit is None or data.limit >= SMALL_LIMIT:
            return
    elif not Path(dataset).expanduser().suffix:
        raise ConfigError(
            f"{source}: dataset {dataset!r} is neither a built-in ({', '.join(BUILTIN_DATASETS)}) nor a .csv/.jsonl path"
        )
    elif not Path(dataset).expanduser().is_file():
        raise ConfigError(f"{source}: dataset file {Path(dataset).expanduser()} does not exist")
    try:
        load_dataset(dataset, seed=config.seed, validation=data.validation, test=data.test, limit=data.limit)
    except TightfitError as exc:
        raise type(exc)(f"{source}: {exc}") from None


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML (or JSON) file whose top level is a mapping; any problem is one ``ConfigError`` line."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{file} is not a text file (not UTF-8); give a YAML or JSON config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{file}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return raw


def packaged_configs() -> list[str]:
    """Names of the configs shipped in ``tightfit/configs`` (``default``, ``smollm2``, ...)."""
    return sorted(p.stem for p in DEFAULT_CONFIG.parent.glob("*.yaml"))


def load_config(path: str | Path | None = None, *, profile: str | None = None) -> PipelineConfig:
    """Read and validate a pipeline config (default: ``tightfit/configs/default.yaml``) with ``profile`` applied.

    ``path`` may also name a packaged config (``smollm2`` -> ``tightfit/configs/smollm2.yaml``)."""
    file = Path(path) if path is not None else DEFAULT_CONFIG
    if path is not None and not file.exists() and str(path) in packaged_configs():
        file = DEFAULT_CONFIG.parent / f"{path}.yaml"
    return config_from_dict(read_mapping(file), profile=profile, source=str(file))


def load_finetune_config(
    path: str | Path | None = None, text: str | None = None, overrides: list[str] | None = None,
) -> FinetuneConfig:
    """A ``FinetuneConfig`` from a YAML/JSON file, a JSON string or ``$TIGHTFIT_FINETUNE_CONFIG`` (first
    given wins), with ``key=value`` overrides (values read as JSON when they parse)."""
    data: dict[str, Any] = {}
    if path:
        data = read_mapping(path)
    elif text or os.environ.get(CONFIG_ENV):
        try:
            data = json.loads(text or os.environ[CONFIG_ENV])
        except json.JSONDecodeError as exc:
            raise ConfigError(f"the finetune config is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("the finetune config must be a JSON object of keys to values")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            data[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            data[key.strip()] = value
    return FinetuneConfig.from_dict(data, source=str(path or "finetune config"))
