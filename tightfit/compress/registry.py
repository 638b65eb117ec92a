"""The one table of compression methods.

A method is a small config dataclass plus a pure function ``(model, config, ctx) -> model``, registered
here with ``@register_method``. Adding a method touches one family file and one test. Families live in
``cast.py``, ``quantize.py``, ``prune.py`` and ``distill.py`` beside this file.

Stages order a chain: structure changes (pruning, layer dropping) come first, then recovery training
(distillation), then precision changes (casts, quantization), then runtime markers (``compile``: the
variant is meant to run under torch.compile; the weights are unchanged). A chain that goes backwards, such as
quantize then prune, cannot work and is refused by ``VariantSpec.validate``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tightfit.errors import ConfigError

STAGE_STRUCTURE = 0
STAGE_RECOVERY = 1
STAGE_PRECISION = 2
STAGE_RUNTIME = 3
STAGE_NAMES = {
    STAGE_STRUCTURE: "structure",
    STAGE_RECOVERY: "recovery",
    STAGE_PRECISION: "precision",
    STAGE_RUNTIME: "runtime",
}

FAMILY_MODULES = ("cast", "quantize", "prune", "distill", "runtime")


@dataclass
class ApplyContext:
    """What a method may need beyond the model: device, model kind, teacher and data for training steps."""

    kind: str = "classifier"
    device: str = "cpu"
    seed: int = 0
    tokenizer: Any = None
    data: Any = None  # tightfit.data.DatasetSplits, for calibration and distillation
    teacher: Any = None  # the unmodified parent model, for distillation
    extra: dict[str, Any] = field(default_factory=dict)


ApplyFn = Callable[[Any, Any, ApplyContext], Any]


@dataclass(frozen=True)
class MethodInfo:
    """One registered method: its name, family, config class, function and where it can run."""

    name: str
    family: str
    config_cls: type
    apply: ApplyFn
    stage: int
    devices: tuple[str, ...] = ("cpu", "cuda")
    kinds: tuple[str, ...] = ("classifier", "causal_lm")
    description: str = ""

    def parameters(self) -> dict[str, Any]:
        """Parameter names and defaults of the config dataclass."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self.config_cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = None
        return out

    def make_config(self, params: dict[str, Any]) -> Any:
        """Build and validate the config; unknown or bad parameters become ConfigError."""
        allowed = set(self.parameters())
        unknown = sorted(set(params) - allowed)
        if unknown:
            listing = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(f"method {self.name!r} has no parameter(s) {unknown}; its parameters: {listing}")
        try:
            return self.config_cls(**params)
        except ConfigError as exc:
            raise ConfigError(f"method {self.name!r}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"method {self.name!r}: bad parameters {params}: {exc}") from None


_REGISTRY: dict[str, MethodInfo] = {}
_loaded = False


def register_method(
    name: str,
    *,
    family: str,
    config: type,
    stage: int,
    devices: tuple[str, ...] = ("cpu", "cuda"),
    kinds: tuple[str, ...] = ("classifier", "causal_lm"),
    description: str = "",
) -> Callable[[ApplyFn], ApplyFn]:
    """Decorator: add ``fn`` to the table under ``name``."""

    def wrap(fn: ApplyFn) -> ApplyFn:
        if name in _REGISTRY and _REGISTRY[name].apply is not fn:
            raise RuntimeError(f"compression method {name!r} registered twice")
        _REGISTRY[name] = MethodInfo(name, family, config, fn, stage, devices, kinds, description)
        return fn

    return wrap


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    for module in FAMILY_MODULES:
        try:
            importlib.import_module(f"tightfit.compress.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tightfit.compress.{module}":
                raise
    _loaded = True


def all_methods() -> dict[str, MethodInfo]:
    """Every registered method by name."""
    _load_families()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> MethodInfo:
    """The method called ``name``; an unknown name lists the known ones."""
    methods = all_methods()
    if name not in methods:
        raise ConfigError(f"unknown compression method {name!r}; known methods: {', '.join(methods)}")
    return methods[name]
