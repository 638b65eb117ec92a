"""Runtimes: how a variant runs. The predict interface every runtime gives (``Runner``), the torch runner,
and the ``compile`` marker. ONNX Runtime's steps and runner live in ``compress/ort/``.

``compile`` marks a variant as meant to run under ``torch.compile`` (inductor). On CPU the torchao int8
speed-up only appears compiled (about 3.5x vs 1x eager), so the footprint of such a variant is measured
compiled, with inputs padded to fixed shape buckets and the warm-up (compilation) excluded from timings.

A ``Runner`` is what ``load_variant`` hands back for every runtime (``variant.runner``): ``encode`` texts to
the runtime's arrays, ``forward`` one batch to logits, ``classify_logits`` a list of texts in fixed-shape
batches (the evaluation protocol), ``classify`` a served batch, ``generate`` for decoders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tightfit.compress.registry import STAGE_RUNTIME, ApplyContext, register_method
from tightfit.errors import ConfigError
from tightfit.names import RUNTIME_TORCH

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


def labels_from_config(config: dict[str, Any] | Any) -> list[str]:
    """Class names by id from an HF config (dict or object); ``["0", "1"]`` when it names none."""
    id2label = config.get("id2label") if isinstance(config, dict) else getattr(config, "id2label", None)
    if not id2label:
        return ["0", "1"]
    by_id = {int(k): str(v) for k, v in dict(id2label).items()}
    return [by_id.get(i, str(i)) for i in range(max(by_id) + 1)]


def softmax(logits: Any) -> Any:
    """Row-wise softmax of a numpy array (float32)."""
    import numpy as np

    z = np.asarray(logits, dtype=np.float32)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class Runner:
    """The predict interface of a loaded variant, the same for every runtime."""

    runtime: str = ""
    kind: str = "classifier"
    device: str = "cpu"
    threads: int = 1
    labels: list[str]

    def encode(self, texts: list[str], *, max_length: int, pad_to_max: bool = True) -> dict[str, Any]:
        """``input_ids`` and ``attention_mask`` in the runtime's array type, ready for ``forward``."""
        raise NotImplementedError

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        """One batch through the model; the logits in the runtime's array type (timed by the profiler)."""
        raise NotImplementedError

    def to_numpy(self, logits: Any) -> Any:
        """Logits as a float32 numpy array."""
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        """Tokens of one text, special tokens included, untruncated."""
        raise NotImplementedError

    def generate(self, texts: list[str], *, max_new_tokens: int, max_length: int) -> list[dict[str, Any]]:
        """Greedy continuations (decoders): ``[{"text": ..., "new_tokens": n}, ...]``."""
        raise NotImplementedError(f"{self.runtime} runner of a {self.kind} does not generate")

    def classify_logits(self, texts: list[str], *, max_length: int = 64, batch_size: int = 32) -> Any:
        """Float32 logits ``[len(texts), labels]``: batches of exactly ``batch_size`` texts (the last one
        filled with copies of its first text, dropped from the output) padded to ``max_length`` tokens, so
        a compiled or fixed-shape runtime sees one shape (the evaluation protocol of every runtime)."""
        import numpy as np

        outs = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            real = len(chunk)
            chunk += [chunk[0]] * (batch_size - real)
            logits = self.to_numpy(self.forward(**self.encode(chunk, max_length=max_length)))
            outs.append(logits[:real])
        return np.concatenate(outs) if outs else np.zeros((0, len(self.labels)), dtype=np.float32)

    def classify(self, texts: list[str], *, max_length: int) -> list[dict[str, Any]]:
        """Label, label id and probability per text of one served batch (padded to ``max_length``)."""
        probs = softmax(self.to_numpy(self.forward(**self.encode(texts, max_length=max_length))))
        out = []
        for row in probs:
            idx = int(row.argmax())
            label = self.labels[idx] if idx < len(self.labels) else str(idx)
            out.append({"label": label, "label_id": idx, "score": round(float(row[idx]), 5)})
        return out


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
