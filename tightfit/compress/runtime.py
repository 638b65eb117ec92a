"""Runtimes: how a variant runs. The torch runner (``TorchRunner``, the ``Runner`` predict interface of
``tightfit.runtime`` for torch variants) and the ``compile`` marker. ONNX Runtime's steps live in
``compress/ort/``, its torch-free runner in ``tightfit.runtime``.

``compile`` marks a variant as meant to run under ``torch.compile`` (inductor). On CPU the torchao int8
speed-up only appears compiled (about 3.5x vs 1x eager), so the footprint of such a variant is measured
compiled, with inputs padded to fixed shape buckets and the warm-up (compilation) excluded from timings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tightfit.compress.registry import STAGE_RUNTIME, ApplyContext, register_method
from tightfit.errors import ConfigError
from tightfit.names import RUNTIME_TORCH
from tightfit.runtime.base import Runner, labels_from_config

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


class TorchRunner(Runner):
    """A torch variant: eager, or under ``torch.compile`` when its manifest says ``run_compiled``."""

    runtime = RUNTIME_TORCH

    def __init__(self, model: Any, tokenizer: Any, *, kind: str, compiled: bool = False, mode: str = "default") -> None:
        import torch

        self.model, self.tokenizer, self.kind = model, tokenizer, kind
        self.compiled = compiled
        self.call = torch.compile(model, mode=mode, dynamic=False) if compiled else model
        first = next(model.parameters(), None)
        self.torch_device = first.device if first is not None else torch.device("cpu")
        self.device = self.torch_device.type
        self.threads = torch.get_num_threads()
        self.labels = labels_from_config(getattr(model, "config", None) or {})

    def run_eager(self) -> None:
        """Run eager from now on even if the manifest says compiled (quick protocols skip compilation)."""
        self.call, self.compiled = self.model, False

    def encode(self, texts: list[str], *, max_length: int, pad_to_max: bool = True) -> dict[str, Any]:
        enc = self.tokenizer(list(texts), padding="max_length" if pad_to_max else True, truncation=True,
                             max_length=max_length, return_tensors="pt")
        return {k: enc[k].to(self.torch_device) for k in ("input_ids", "attention_mask")}

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        import torch

        with torch.inference_mode():
            return self.call(input_ids=input_ids, attention_mask=attention_mask).logits

    def to_numpy(self, logits: Any) -> Any:
        return logits.float().cpu().numpy()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    def generate(self, texts: list[str], *, max_new_tokens: int, max_length: int) -> list[dict[str, Any]]:
        import torch

        tok = self.tokenizer
        enc = tok(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        enc = {k: v.to(self.torch_device) for k, v in enc.items()}
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        return [{"text": tok.decode(row, skip_special_tokens=True), "new_tokens": int((row != tok.pad_token_id).sum())}
                for row in new]
