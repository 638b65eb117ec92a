"""Compression: apply a ``VariantSpec`` chain (registered methods) to a model and save the variant directory.

    build_variant("minilm", VariantSpec.parse("prune_structured:heads=0.5,ffn=0.5|distill|int8_dynamic"),
                  "out/student", data=load_dataset("rotten_tomatoes"))
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tightfit.assets import load_model, name_labels
from tightfit.compress._torch import quiet_transformers
from tightfit.compress.registry import ApplyContext, get_method, validate_chain
from tightfit.compress.variant import load_variant, save_variant
from tightfit.device import pick_device
from tightfit.errors import ConfigError
from tightfit.progress import Reporter, as_reporter
from tightfit.spec import VariantSpec

if TYPE_CHECKING:
    from tightfit.data import DatasetSplits


def load_base(base: str | Path) -> tuple[Any, Any, str, str, str | None]:
    """(model, tokenizer, kind, base_model, parent) for a built-in name, an HF dir or a variant dir."""

    quiet_transformers()
    path = Path(str(base)).expanduser()
    if (path / "manifest.json").exists():
        variant = load_variant(path, device="cpu")
        if variant.model is None:
            raise ConfigError(
                f"{path} runs on {variant.runtime}: a chain cannot continue after its runtime step; build from "
                f"its parent ({variant.manifest.get('parent') or 'the base model'}) with the whole chain instead"
            )
        return variant.model, variant.tokenizer, variant.kind, variant.manifest["base_model"], str(path)
    loaded = load_model(str(base))
    return loaded.model, loaded.tokenizer, loaded.kind, str(base), None


def apply_chain(
    model: Any,
    spec: VariantSpec,
    *,
    kind: str,
    tokenizer: Any = None,
    data: DatasetSplits | None = None,
    teacher: Any = None,
    device: str = "cpu",
    seed: int = 0,
    progress: Reporter | bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Validate ``spec`` for ``kind``/``device`` and run its steps in order; returns (model, notes).

    ``progress``: a ``tightfit.progress.Reporter`` (one task per step, distillation's steps inside), True for
    one on the console, False for none."""
    configs = validate_chain(spec, kind, device)
    ctx = ApplyContext(kind=kind, device=device, seed=seed, tokenizer=tokenizer, data=data, teacher=teacher)
    reporter = as_reporter(progress)
    ctx.extra["progress"] = reporter
    timings: dict[str, float] = {}
    n = len(spec.steps)
    try:
        for i, (step, config) in enumerate(zip(spec.steps, configs, strict=True)):
            started = time.perf_counter()
            with reporter.step(f"{spec.name}/step{i}", f"{spec.name}: {step.method}", detail=f"step {i + 1} of {n}"):
                model = get_method(step.method).apply(model, config, ctx)
            timings[f"step{i}.{step.method}.seconds"] = round(time.perf_counter() - started, 3)
    finally:
        if not isinstance(progress, Reporter):
            reporter.close()
    notes = {k: v for k, v in ctx.extra.items() if k != "progress"}
    notes["timings"] = timings
    return model.eval(), notes  # an ONNX step returns an OnnxExport, whose eval() is itself


def build_variant(
    base: str | Path,
    spec: VariantSpec,
    out_dir: str | Path,
    *,
    data: DatasetSplits | None = None,
    teacher: str | Path | None = None,
    device: str | None = None,
    progress: Reporter | bool = True,
) -> Path:
    """Load ``base``, validate and apply ``spec``, save the variant directory; returns its path.

    ``teacher`` (for ``distill``) defaults to the unmodified base model.
    """

    device = pick_device(device)
    model, tokenizer, kind, base_model, parent = load_base(base)
    validate_chain(spec, kind, device)
    if data is not None and kind == "classifier":
        name_labels(model, data.label_names)  # the variant serves the dataset's label names
    teacher_model = None
    if any(s.method == "distill" for s in spec.steps):
        teacher_model = load_base(teacher)[0] if teacher is not None else copy.deepcopy(model)
    model, notes = apply_chain(
        model, spec, kind=kind, tokenizer=tokenizer, data=data, teacher=teacher_model, device=device,
        progress=progress,
    )
    if data is not None:
        notes["dataset"] = getattr(data, "name", None)
    if teacher is not None:
        notes["teacher"] = str(teacher)
    return save_variant(model, tokenizer, out_dir, spec, base_model=base_model, kind=kind, parent=parent, extra=notes)


# The structured student of the lean-runtime variants: half the heads and three quarters of the FFN neurons
# removed, the vocabulary pruned to the training corpus, recovered by distillation (benchmarks/compression.py
# measures the trade-off; docs/compression.md has the exploration).
LEAN_STUDENT = "prune_structured:heads=0.5,ffn=0.75|prune_vocab|distill"


def default_variant_set(kind: str = "classifier", device: str | None = None) -> list[VariantSpec]:
    """The variants the default pipeline sweeps for a model kind (GPU-only ones only where a GPU is)."""

    on_gpu = pick_device(device).startswith("cuda")
    p = VariantSpec.parse
    if kind == "causal_lm":  # the 4-bit methods run on CPU and GPU; AWQ and mixed read the pipeline's data
        return [p("fp32"), p("bf16"), p("int8_dynamic", "int8-dynamic"),
                p("int4_weight_only:group_size=32", "int4-g32"), p("int4_weight_only:group_size=64", "int4-g64"),
                p("int4_awq:group_size=64", "int4-awq-g64"), p("mixed_int4:keep=0.1,group_size=32", "int4-mixed"),
                p("int4_awq:group_size=32|int8_embeddings", "int4-awq-g32-int8-head")]
    specs = [
        p("fp32"),
        p("bf16"),
        p("int8_dynamic|compile", "int8-dynamic"),
        p("int8_weight_only", "int8-weight-only"),
        p("int8_dynamic|int8_embeddings|compile", "int8-all"),
        p("prune_unstructured:sparsity=0.5", "unstructured-50"),
        p("prune_structured:heads=0.5,ffn=0.5|prune_vocab|distill", "structured-50-distilled"),
        p("drop_layers:keep_every=2|distill", "student-3layer-distilled"),
        p("prune_structured:heads=0.5,ffn=0.5|prune_vocab|distill|int8_dynamic|int8_embeddings|compile",
          "structured-50-distilled-int8"),
    ]
    # the lean runtime: ONNX Runtime + tokenizers in the replica, no torch (see compress/ort)
    specs += [
        p("onnx_int8_dynamic", "ort-int8"),
        p(f"{LEAN_STUDENT}|onnx_int8_dynamic", "structured-ort-int8"),
        p(f"{LEAN_STUDENT}|onnx_int8_static", "structured-ort-int8-static"),
    ]
    if on_gpu:
        specs.insert(5, p("int4_weight_only", "int4-weight-only"))
    return specs
