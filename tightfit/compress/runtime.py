"""Runtime markers: steps that change how a variant runs, not its weights.

``compile`` marks a variant as meant to run under ``torch.compile`` (inductor). On CPU the torchao int8
speed-up only appears compiled (about 3.5x vs 1x eager), so the footprint of such a variant is measured
compiled, with inputs padded to fixed shape buckets and the warm-up (compilation) excluded from timings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tightfit.compress.registry import STAGE_RUNTIME, ApplyContext, register_method
from tightfit.errors import ConfigError

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")


@dataclass(frozen=True)
class CompileConfig:
    """``mode``: a torch.compile mode."""

    mode: str = "default"

    def __post_init__(self) -> None:
        if self.mode not in COMPILE_MODES:
            raise ConfigError(f"mode must be one of {', '.join(COMPILE_MODES)}, got {self.mode!r}")


@register_method(
    "compile",
    family="runtime",
    config=CompileConfig,
    stage=STAGE_RUNTIME,
    description="run the variant under torch.compile (fixed padded shapes); needed for int8 speed on CPU",
)
def mark_compiled(model: Any, config: CompileConfig, ctx: ApplyContext) -> Any:
    ctx.extra["compile"] = {"mode": config.mode}
    return model
