"""``FinetuneConfig``: the one schema of a fine-tuning (or distillation) run.

The CLI (``tightfit finetune``), the pipeline file's ``finetune:`` section, the KFP ``finetune`` component,
the Ray Jobs entrypoint and a KubeRay RayJob all build this model, so a key means the same everywhere and
a bad value is refused the same way, before any worker starts. It round-trips through JSON (the Ray job
receives it in ``$TIGHTFIT_FINETUNE_CONFIG``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from tightfit import names
from tightfit.errors import ConfigError, UnsupportedError, describe_validation_error
from tightfit.spec import PERSON
from tightfit.train.ingest import Ingest
from tightfit.units import parse_bytes

Fraction = float
CONFIG_ENV = "TIGHTFIT_FINETUNE_CONFIG"
MAX_TOKENS = 32_768
"""No text model tightfit runs reads longer sequences; a larger token count is a typo."""
MAX_BATCH = 1_048_576
"""The environment variable a Ray job reads its ``FinetuneConfig`` JSON from."""


class FinetuneConfig(BaseModel):
    """Everything one fine-tuning run needs (distillation when ``teacher_dir`` is set)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    model: str = "minilm"
    dataset: str = "rotten_tomatoes"
    teacher_dir: str | None = None
    workers: PositiveInt = Field(default=2, le=4096)
    cpus_per_worker: PositiveInt = Field(default=1, le=1024)
    use_gpu: bool = False
    epochs: PositiveInt = Field(default=2, le=10_000, description="the most epochs over the whole train split")
    patience: NonNegativeInt = Field(
        default=1, description="stop after this many epochs in a row without a better `monitor`; 0 = every epoch",
    )
    monitor: Literal["val_loss", "val_accuracy"] = Field(
        default="val_accuracy",
        description="the validation figure early stopping watches; accuracy, the figure variants are judged on "
        "(validation loss of a fine-tuned classifier often rises while its accuracy still climbs)",
    )
    min_delta: float = Field(default=0.0, ge=0, description="the least change of `monitor` that counts as better")
    global_batch: PositiveInt = Field(
        default=32, le=MAX_BATCH, validation_alias=AliasChoices("global_batch", "batch_size"),
        description="samples per optimizer step over all workers (pipeline files call it batch_size)",
    )
    micro_batch: PositiveInt | None = Field(default=None, le=MAX_BATCH)
    memory_budget: str | None = Field(default=None, description="per-worker budget with a unit, e.g. '4GiB'")
    max_length: int = Field(default=64, ge=8, le=MAX_TOKENS)
    lr: float = Field(default=5e-5, gt=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: Fraction = Field(default=0.1, ge=0, lt=1)
    seed: int = Field(default=0, ge=0, lt=2**32)
    limit: PositiveInt | None = None
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    ingest: Ingest = Field(
        default="auto",
        description="how the splits reach the workers: memory (tokenized once, in the object store, read with a "
        "torch DataLoader), ray_data (Ray Data streams them), auto (memory when their tokens take at most 256 MiB)",
    )
    gradient_checkpointing: bool = False
    temperature: float = Field(default=2.0, gt=0)
    alpha: Fraction = Field(default=0.5, ge=0, le=1)
    out_dir: str | None = None
    storage_path: str | None = None
    run_name: str | None = None
    max_failures: NonNegativeInt = Field(default=1, le=100)
    target_accuracy: Fraction | None = Field(default=None, gt=0, le=1)
    tracking_uri: str | None = None
    experiment: str = names.DEFAULT_EXPERIMENT
    num_cpus: PositiveInt | None = Field(default=None, le=100_000)
    address: str | None = Field(default=None, description="Ray Jobs API address; None = a local Ray")
    evaluate_test: bool = True
    log_model: bool = True

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        if value is not None and not isinstance(value, bool):
            parse_bytes(value, field="", require_unit=True)  # type: ignore[arg-type]
        return value

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.strategy == "fsdp" and not self.use_gpu:
            raise UnsupportedError(
                "strategy fsdp needs GPU workers (Ray Train's prepare_model wraps FSDP only on GPUs); "
                "use --strategy ddp on CPU, or add --gpu"
            )
        return self

    @property
    def memory_budget_bytes(self) -> int | None:
        return None if self.memory_budget is None else parse_bytes(self.memory_budget, field="memory_budget")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "finetune config") -> FinetuneConfig:
        """Validate keys a person wrote (sizes need units); any problem is one ``ConfigError`` line."""
        try:
            return cls.model_validate(data, context={PERSON: True})
        except ValidationError as exc:
            raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_json(self) -> str:
        return self.model_dump_json()
