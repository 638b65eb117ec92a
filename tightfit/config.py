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
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tightfit.errors import ConfigError
from tightfit.spec import HardwareTarget, VariantSpec

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
PROFILES = ("quick", "full")


class DataConfig(BaseModel):
    """How much of the dataset to use and how to split it."""

    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(default=None, description="rows per split (head of each shuffled split); None = all")
    validation: float = 0.1
    test: float = 0.2
    max_length: int = 64

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


class FinetuneSettings(BaseModel):
    """The baseline fine-tune on Ray Train (fields mirror ``tightfit.train.FinetuneConfig``)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = 2
    batch_size: int = 32
    lr: float = 5e-5
    workers: int = 1
    cpus_per_worker: int = 1
    memory_budget: str | None = Field(default=None, description="per-worker budget, e.g. '4GiB'")
    address: str | None = Field(default=None, description="Ray Jobs API address; None = a local Ray")

    @model_validator(mode="after")
    def _check(self) -> FinetuneSettings:
        for key in ("epochs", "batch_size", "workers", "cpus_per_worker"):
            if getattr(self, key) < 1:
                raise ValueError(f"finetune.{key} must be >= 1, got {getattr(self, key)}")
        if not 0 < self.lr < 1:
            raise ValueError(f"finetune.lr must be in (0, 1), got {self.lr}")
        if self.memory_budget is not None:
            from tightfit.units import parse_bytes

            parse_bytes(self.memory_budget, field="finetune.memory_budget")
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

    seq_len: int = 64
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


class PipelineConfig(BaseModel):
    """The whole configuration file after its profile has been applied."""

    model_config = ConfigDict(extra="forbid")

    model: str = "minilm"
    kind: Literal["classifier", "causal_lm"] = "classifier"
    dataset: str = "rotten_tomatoes"
    seed: int = 0
    profile: str = "full"
    data: DataConfig = Field(default_factory=DataConfig)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    variants: list[VariantItem] = Field(default_factory=list)
    target: HardwareTarget = Field(default_factory=HardwareTarget)
    measure: MeasureSettings = Field(default_factory=MeasureSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    deploy: DeploySettings = Field(default_factory=DeploySettings)
    resources: ResourceSettings = Field(default_factory=ResourceSettings)

    @field_validator("variants", mode="before")
    @classmethod
    def _default_set(cls, value: Any) -> Any:
        if value == "default":
            from tightfit.compress import default_variant_set

            return [{"variant": s.name, "chain": s.chain} for s in default_variant_set("classifier")]
        return value

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
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


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key (check the spelling; see tightfit/configs/default.yaml for every key)"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)


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
        config = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
    except ConfigError as exc:  # raised by a unit parser or the registry inside a validator
        raise ConfigError(f"{source}: {exc}") from None
    _check_variants(config, source)
    _check_dataset(config.dataset, source)
    return config


def _check_variants(config: PipelineConfig, source: str) -> None:
    for index, item in enumerate(config.variants):
        try:
            item.spec().validate_for(config.kind)
        except ConfigError as exc:
            raise ConfigError(f"{source}: variants[{index}] ({item.variant}, chain {item.chain!r}): {exc}") from None


def _check_dataset(dataset: str, source: str) -> None:
    """Built-in names pass; a file must exist and have ``text`` and ``label`` columns (header only is read)."""
    from tightfit.data import BUILTIN_DATASETS

    if dataset in BUILTIN_DATASETS:
        return
    path = Path(dataset).expanduser()
    if not path.suffix:
        raise ConfigError(
            f"{source}: dataset {dataset!r} is neither a built-in ({', '.join(BUILTIN_DATASETS)}) nor a .csv/.jsonl path"
        )
    if not path.exists():
        raise ConfigError(f"{source}: dataset file {path} does not exist")
    columns = _dataset_columns(path)
    missing = [c for c in ("text", "label") if c not in columns]
    if missing:
        raise ConfigError(
            f"{source}: dataset {path} lacks column(s) {missing}; it has {columns}. "
            "Rename the columns to 'text' and 'label'."
        )


def _dataset_columns(path: Path) -> list[str]:
    import pandas as pd

    if ".csv" in path.suffixes:
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    if ".jsonl" in path.suffixes or ".json" in path.suffixes:
        with path.open() as handle:
            first = handle.readline()
        try:
            row = json.loads(first) if first.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(f"dataset {path}: first line is not JSON ({exc.msg})") from None
        return list(row) if isinstance(row, dict) else []
    raise ConfigError(f"dataset {path}: use a .csv or .jsonl file with 'text' and 'label' columns")


def load_config(path: str | Path | None = None, *, profile: str | None = None) -> PipelineConfig:
    """Read and validate a YAML config (default: ``tightfit/configs/default.yaml``) with ``profile`` applied."""
    file = Path(path) if path is not None else DEFAULT_CONFIG
    if not file.exists():
        raise ConfigError(f"config file {file} does not exist")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    return config_from_dict(raw or {}, profile=profile, source=str(file))
