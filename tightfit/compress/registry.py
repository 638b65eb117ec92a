"""The one table of compression methods.

A method is a small config dataclass plus a pure function ``(model, config, ctx) -> model``, registered
here with ``@register_method``. Adding a method touches one family file and one test. Families live in
``cast.py``, ``quantize.py``, ``prune.py``, ``distill.py`` and ``runtime.py`` beside this file, and the ONNX
Runtime steps in ``ort/``.

Stages order a chain: structure changes (pruning, layer dropping) come first, then recovery training
(distillation), then precision changes (casts, quantization), then one runtime step, last (``compile``: the variant runs
under torch.compile, weights unchanged; ``onnx*``: the variant becomes an ONNX graph run by ONNX Runtime,
which quantizes in the step itself). A chain that goes backwards, such as quantize then prune, cannot work
and is refused by ``validate_chain``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tightfit.errors import ConfigError, UnsupportedError
from tightfit.spec import VariantSpec

if TYPE_CHECKING:
    from tightfit.data import DatasetSplits

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

FAMILY_MODULES = ("cast", "quantize", "lowbit", "prune", "distill", "runtime", "ort")


@dataclass
class ApplyContext:
    """What a method may need beyond the model: device, model kind, teacher and data for training steps."""

    kind: str = "classifier"
    device: str = "cpu"
    seed: int = 0
    tokenizer: Any = None
    data: DatasetSplits | None = None  # calibration and distillation batches
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


LINEAR_QUANTIZERS = ("int8_dynamic", "int8_weight_only", "int4_weight_only", "int4_awq", "mixed_int4")
CASTS = ("bf16", "fp16")
ONNX_FAMILY = "onnx"


def _check_runtime_stage(spec: VariantSpec, methods: list[str]) -> None:
    """At most one runtime step, and it comes last; an ONNX step exports fp32 torch weights, so no torch
    precision step may come before it (ONNX Runtime quantizes in the step: ``onnx_int8_dynamic``)."""
    runtimes = [i for i, m in enumerate(methods) if get_method(m).stage == STAGE_RUNTIME]
    if len(runtimes) > 1:
        chosen = " and ".join(methods[i] for i in runtimes)
        raise ConfigError(f"variant {spec.name!r}: pick one runtime, not {chosen}")
    if runtimes and runtimes[0] != len(methods) - 1:
        raise ConfigError(
            f"variant {spec.name!r}: the runtime step {methods[runtimes[0]]!r} must be the last step of the chain"
        )
    if runtimes and get_method(methods[runtimes[0]]).family == ONNX_FAMILY:
        precision = [m for m in methods if get_method(m).stage == STAGE_PRECISION]
        if precision:
            raise ConfigError(
                f"variant {spec.name!r}: {', '.join(precision)} cannot be exported to ONNX; drop it and quantize "
                f"in the runtime step (e.g. '...|onnx_int8_dynamic' instead of '{precision[0]}|{methods[-1]}')"
            )


def validate_chain(spec: VariantSpec, kind: str = "classifier", device: str | None = None) -> list[Any]:
    """The one check of a chain, before any work: every method is known, takes these parameters and
    supports ``kind``; stages run structure -> recovery -> precision -> runtime; at most one cast and one
    Linear quantizer, a cast before quantizing, each precision step once; one runtime step at most, last,
    and no torch precision step before an ONNX one; and, given a ``device``, every
    method runs there (``cuda:1`` counts as ``cuda``). Returns the method configs in order.

    Bad chains raise ``ConfigError``; a method that needs another device raises ``UnsupportedError``.
    """
    configs = []
    last_stage, last_method = -1, None
    for step in spec.steps:
        info = get_method(step.method)
        if kind not in info.kinds:
            raise ConfigError(
                f"variant {spec.name!r}: method {step.method!r} does not support {kind} models "
                f"(it supports {', '.join(info.kinds)})"
            )
        if info.stage < last_stage:
            raise ConfigError(
                f"variant {spec.name!r}: {step.method!r} ({STAGE_NAMES[info.stage]}) cannot come after "
                f"{last_method!r} ({STAGE_NAMES[last_stage]}); order steps structure -> recovery -> precision "
                "-> runtime, e.g. 'prune_structured|distill|int8_dynamic'"
            )
        last_stage, last_method = info.stage, step.method
        configs.append(info.make_config(dict(step.params)))
    methods = [s.method for s in spec.steps]
    _check_runtime_stage(spec, methods)
    for group, what in ((CASTS, "cast"), (LINEAR_QUANTIZERS, "Linear quantizer")):
        chosen = [m for m in methods if m in group]
        if len(chosen) > 1:
            raise ConfigError(f"variant {spec.name!r}: pick one {what}, not {' and '.join(chosen)}")
    precision = [m for m in methods if get_method(m).stage >= STAGE_PRECISION]
    repeated = sorted({m for m in precision if precision.count(m) > 1})
    if repeated:
        raise ConfigError(f"variant {spec.name!r}: {', '.join(repeated)} appears twice; apply it once")
    quantized = [i for i, m in enumerate(methods) if get_method(m).stage == STAGE_PRECISION and m not in CASTS]
    casts = [i for i, m in enumerate(methods) if m in CASTS]
    if casts and quantized and casts[0] > quantized[0]:
        raise ConfigError(
            f"variant {spec.name!r}: cast ({methods[casts[0]]}) before quantizing, e.g. 'bf16|int8_weight_only'"
        )
    if device is not None:
        family = device.split(":", 1)[0]
        for method in methods:
            info = get_method(method)
            if family not in info.devices:
                need = "a GPU" if info.devices == ("cuda",) else " or ".join(info.devices)
                raise UnsupportedError(f"{method} needs {need}; this run is on {device}")
    return configs
