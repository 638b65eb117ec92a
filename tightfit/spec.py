"""What to build and what it must fit: ``VariantSpec`` (a chain of compression steps) and ``HardwareTarget``.

A spec string reads like ``prune_structured:heads=0.5,ffn=0.5|distill|int8_dynamic``. The same spec is the
variant's MLflow params and the cache key of its KFP task, so it has one canonical string form.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from tightfit.errors import ConfigError, describe_validation_error
from tightfit.units import format_bytes, parse_bytes, parse_millis

Scalar = bool | int | float | str
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
PERSON = "person"
"""Validation context key: the values come from a person (a config file, a flag), so units are required."""


def _parse_scalar(text: str) -> Scalar:
    lowered = text.strip().lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


class StepSpec(BaseModel):
    """One step of a chain: a registered method and its parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str
    params: dict[str, Scalar] = Field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> StepSpec:
        """``method`` or ``method:key=value,key=value``."""
        method, _, rest = text.strip().partition(":")
        if not method:
            raise ConfigError(f"empty step in spec {text!r}; write steps like 'int8_dynamic' or 'prune_unstructured:sparsity=0.5'")
        params: dict[str, Scalar] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise ConfigError(f"step {text!r}: parameter {item!r} must look like key=value")
            params[key.strip()] = _parse_scalar(value)
        return cls(method=method.strip(), params=params)

    def __str__(self) -> str:
        if not self.params:
            return self.method
        return self.method + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))


class VariantSpec(BaseModel):
    """A named, ordered chain of compression steps. No steps means the baseline itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    steps: tuple[StepSpec, ...] = ()

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"variant name {value!r} must be 1-63 letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        return value

    @classmethod
    def parse(cls, text: str, name: str | None = None) -> VariantSpec:
        """Parse ``step|step|...``; ``fp32``/``baseline``/``none`` means no steps; an empty spec is an error."""
        text = text.strip()
        if not text:
            raise ConfigError(
                "the spec is empty; write 'fp32' for an unchanged copy or a chain such as "
                "'int8_dynamic' or 'prune_structured:heads=0.5|distill' (`tightfit methods` lists the steps)"
            )
        steps: tuple[StepSpec, ...] = ()
        if text not in {"fp32", "baseline", "none"}:
            steps = tuple(StepSpec.parse(part) for part in text.split("|"))
        default_name = "-".join(s.method for s in steps) or "fp32"
        try:
            return cls(name=name or default_name, steps=steps)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def chain(self) -> str:
        """The canonical spec string."""
        return "|".join(str(s) for s in self.steps) or "fp32"

    def to_params(self) -> dict[str, str]:
        """Flat MLflow params: the chain plus one entry per step parameter."""
        params = {"variant": self.name, "chain": self.chain, "n_steps": str(len(self.steps))}
        for i, step in enumerate(self.steps):
            params[f"step{i}.method"] = step.method
            for key, value in sorted(step.params.items()):
                params[f"step{i}.{key}"] = str(value)
        return params

    def cache_key(self) -> str:
        """Stable hash of the chain (not the name): equal chains share cached work."""
        return hashlib.sha256(self.chain.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "chain": self.chain})

    @classmethod
    def from_json(cls, text: str) -> VariantSpec:
        data = json.loads(text)
        return cls.parse(data["chain"], name=data["name"])


class HardwareTarget(BaseModel):
    """The four hardware limits (memory, disk, compute/latency, bandwidth) and a quality floor, stated once.

    Every field is optional; a variant fits when it satisfies each limit that is set.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    memory_bytes: int | None = None
    disk_bytes: int | None = None
    latency_ms: float | None = None
    latency_batch: int = 1
    compute_flops: float | None = None  # sustained FLOP/s available to one replica
    bandwidth_bytes_per_s: float | None = None
    min_accuracy: float | None = None
    max_perplexity: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse_units(cls, data: Any, info: ValidationInfo) -> Any:
        """Sizes and durations through ``tightfit.units``; written by a person (``context={"person": True}``,
        as config files and flags are validated) every size and duration needs its unit."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        person = bool((info.context or {}).get(PERSON))
        aliases = {"memory": "memory_bytes", "disk": "disk_bytes", "latency": "latency_ms", "bandwidth": "bandwidth_bytes_per_s"}
        for short, full in aliases.items():
            if short in data:
                if full in data:
                    raise ValueError(f"give either {short!r} or {full!r}, not both")
                data[full] = data.pop(short)
        for key in ("memory_bytes", "disk_bytes"):
            if data.get(key) is not None:
                data[key] = parse_bytes(data[key], field=key.removesuffix("_bytes"), require_unit=person)
        if data.get("bandwidth_bytes_per_s") is not None:
            value = data["bandwidth_bytes_per_s"]
            if isinstance(value, str):
                value = value.strip().removesuffix("/s")
            data["bandwidth_bytes_per_s"] = float(parse_bytes(value, field="bandwidth", require_unit=person))
        if data.get("latency_ms") is not None:
            data["latency_ms"] = parse_millis(data["latency_ms"], field="latency", require_unit=person)
        return data

    @model_validator(mode="after")
    def _check(self) -> HardwareTarget:
        for key in ("memory_bytes", "disk_bytes", "compute_flops", "bandwidth_bytes_per_s", "max_perplexity"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"{key} must be positive, got {value}")
        if self.latency_batch < 1:
            raise ValueError(f"latency_batch must be >= 1, got {self.latency_batch}")
        if self.min_accuracy is not None and not 0 < self.min_accuracy <= 1:
            hint = f"; did you mean {self.min_accuracy / 100:g}?" if 1 < self.min_accuracy <= 100 else ""
            raise ValueError(f"min_accuracy is a fraction in (0, 1], got {self.min_accuracy}{hint}")
        if self.min_accuracy is not None and self.max_perplexity is not None:
            raise ValueError("min_accuracy (classifiers) and max_perplexity (language models) contradict; set one")
        return self

    @classmethod
    def parse(cls, **values: Any) -> HardwareTarget:
        """Build from user values (sizes as '1GiB' strings), dropping Nones; errors become ConfigError."""
        try:
            return cls.model_validate({k: v for k, v in values.items() if v is not None}, context={PERSON: True})
        except ValueError as exc:
            raise ConfigError(f"invalid hardware target: {describe_validation_error(exc)}") from None

    def describe(self) -> str:

        parts = []
        if self.memory_bytes:
            parts.append(f"memory <= {format_bytes(self.memory_bytes)}")
        if self.disk_bytes:
            parts.append(f"disk <= {format_bytes(self.disk_bytes)}")
        if self.latency_ms:
            parts.append(f"p95 latency (batch {self.latency_batch}) <= {self.latency_ms:g} ms")
        if self.bandwidth_bytes_per_s:
            parts.append(f"bandwidth {format_bytes(self.bandwidth_bytes_per_s)}/s")
        if self.compute_flops:
            parts.append(f"compute {self.compute_flops:.3g} FLOP/s")
        if self.min_accuracy:
            parts.append(f"accuracy >= {self.min_accuracy:g}")
        if self.max_perplexity:
            parts.append(f"perplexity <= {self.max_perplexity:g}")
        return ", ".join(parts) or "no limits"
