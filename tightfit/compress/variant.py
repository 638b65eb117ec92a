"""A variant directory: manifest + weights that load back anywhere, without pickled Python objects.

Layout::

    manifest.json      spec, base model, parent, kind, per-layer shapes, kept vocabulary rows, rebuild steps,
                       versions, checksums
    config.json        the HF config (layer count already reduced by layer dropping)
    tokenizer files    tokenizer.save_pretrained (tokenizer.json: the ONNX runtime reads it with ``tokenizers``)
    model.safetensors  plain tensors (sparse ones as values + bit mask), or
    weights.pt         a state dict of torchao tensor subclasses, read with torch.load(weights_only=True), or
    model.onnx         the ONNX graph of a variant whose chain ends in an ONNX Runtime step (``runtime``)

``load_variant`` returns a ``Variant`` whose ``runner`` is the same predict interface for every runtime
(``tightfit.runtime.Runner``). A torch variant is rebuilt from the config, its pruned layers (and a pruned
vocabulary) resized, its precision steps (casts, quantization) re-applied to the fresh module, then its
weights loaded with ``load_state_dict(assign=True)``. An ONNX variant opens an ONNX Runtime session and a
``tokenizers`` tokenizer (``tightfit.runtime``), importing neither torch nor transformers. Any missing,
truncated or altered file is a ``VariantError``.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tightfit.compress._torch import quiet_transformers, torchao_quantization
from tightfit.compress.registry import STAGE_PRECISION, ApplyContext, get_method
from tightfit.compress.structure import apply_layer_shapes, read_layer_shapes
from tightfit.device import pick_device
from tightfit.errors import ConfigError, VariantError
from tightfit.names import RUNTIME_ONNXRUNTIME, RUNTIME_TORCH
from tightfit.runtime.manifest import FORMAT, MANIFEST, read_manifest, runtime_of, sha256_of, verify_variant
from tightfit.spec import StepSpec, VariantSpec

__all__ = ["FORMAT", "MANIFEST", "Variant", "load_variant", "read_manifest", "runtime_of", "save_variant",
           "verify_variant"]

SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "weights.pt"
ONNX_FILE = "model.onnx"
SPARSE_MIN_ZEROS = 0.25  # store a tensor sparse when at least this fraction is zero
_VALUES, _MASK = ".__sparse_values__", ".__sparse_mask__"
VERSIONED = ("tightfit", "torch", "transformers", "torchao", "safetensors", "onnx", "onnxruntime", "tokenizers")


@dataclass
class Variant:
    """A loaded variant: its ``runner`` (the predict interface of every runtime) plus what it is. ``model``
    and ``tokenizer`` are the eval-mode torch module and transformers tokenizer of a torch variant; an ONNX
    variant has no torch module (``model`` is None) and a ``tokenizers``-based tokenizer."""

    model: Any
    tokenizer: Any
    manifest: dict[str, Any]
    path: Path
    runner: Any = None  # tightfit.runtime.Runner

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def runtime(self) -> str:
        return runtime_of(self.manifest)

    def classify_logits(self, texts: list[str], *, max_length: int = 64, batch_size: int = 32) -> Any:
        """Float32 logits of ``texts`` (numpy), whatever the runtime (see ``Runner.classify_logits``)."""
        return self.runner.classify_logits(texts, max_length=max_length, batch_size=batch_size)

    @property
    def spec(self) -> VariantSpec:
        return VariantSpec.parse(self.manifest["chain"], name=self.manifest["name"])

    @property
    def run_compiled(self) -> bool:
        return bool(self.manifest.get("run_compiled"))


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _is_plain(tensor: Any) -> bool:
    import torch

    return type(tensor) is torch.Tensor or type(tensor) is torch.nn.Parameter


def _encode_safetensors(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Plain tensors for safetensors: sparse ones as values + packed bit mask, shared ones once."""
    import numpy as np
    import torch

    out: dict[str, Any] = {}
    sparse: dict[str, Any] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...], str], str] = {}
    for key, value in state.items():
        tensor = value.detach().cpu()
        ident = (value.data_ptr(), tuple(value.shape), str(value.dtype))
        if value.numel() and ident in seen:
            tied[key] = seen[ident]
            continue
        seen[ident] = key
        if tensor.is_floating_point() and tensor.dim() == 2:
            mask = tensor != 0
            if 1.0 - mask.float().mean().item() >= SPARSE_MIN_ZEROS:
                out[key + _VALUES] = tensor[mask].contiguous()
                out[key + _MASK] = torch.from_numpy(np.packbits(mask.flatten().numpy()))
                sparse[key] = {"shape": list(tensor.shape), "nnz": int(mask.sum())}
                continue
        out[key] = tensor.contiguous()
    return out, sparse, tied


def _decode_safetensors(tensors: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    weights = manifest["weights"]
    state = {k: v for k, v in tensors.items() if not k.endswith((_VALUES, _MASK))}
    for key, info in weights.get("sparse", {}).items():
        values = tensors[key + _VALUES]
        numel = int(np.prod(info["shape"]))
        bits = np.unpackbits(tensors[key + _MASK].numpy(), count=numel).astype(bool)
        dense = torch.zeros(numel, dtype=values.dtype)
        dense[torch.from_numpy(bits)] = values
        state[key] = dense.reshape(info["shape"])
    # Packed int8 tables mapped from the file can start off a 64-byte boundary, where PyTorch's CPU int8
    # kernel crashed (SIGSEGV) decoding the mixed int4/int8 SmolLM2: such a table and its scales get one
    # aligned copy, before tied keys are resolved so that a tied head still shares its table.
    for key in [k for k, v in state.items() if k.endswith(".qdata") and v.dtype == torch.int8]:
        scale = key[: -len("qdata")] + "scale"
        if state[key].data_ptr() % 64 or (scale in state and state[scale].data_ptr() % 64):
            state[key] = state[key].clone()
            if scale in state:
                state[scale] = state[scale].clone()
    for key, source in weights.get("tied", {}).items():
        state[key] = state[source]
    return state


def save_variant(
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
    spec: VariantSpec,
    *,
    base_model: str,
    kind: str,
    parent: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the variant directory atomically (a ``.partial`` sibling renamed into place); returns its path.
    A failed write (a full disk, a file-size limit) removes the partial directory and is a ``VariantError``."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise VariantError(f"{out} exists and is not a variant directory; choose an empty or new --out")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        _write_variant(model, tokenizer, tmp, spec, base_model=base_model, kind=kind, parent=parent, extra=extra)
    except Exception as exc:  # a full disk, a file-size limit, a vanished directory: nothing half-written stays
        shutil.rmtree(tmp, ignore_errors=True)
        if not (isinstance(exc, OSError | RuntimeError) or type(exc).__name__ == "SafetensorError"):
            raise
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise VariantError(
            f"writing variant {out} failed ({reason}); nothing was left at {out}: free disk space and rerun"
        ) from None
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # the only step that makes `out` a variant: a reader never sees a half-written one
    return out


def _write_variant(
    model: Any, tokenizer: Any, tmp: Path, spec: VariantSpec, *, base_model: str, kind: str, parent: str | None,
    extra: dict[str, Any] | None,
) -> None:
    """Every file of the variant into ``tmp``, the manifest (with the checksums) last."""
    from tightfit.compress.vocab import read_vocab_rows

    extra = dict(extra or {})
    onnx_info = None
    if hasattr(model, "onnx_path"):  # an OnnxExport from an ONNX Runtime step (compress.ort)
        onnx_info, weights = _write_onnx(model, tokenizer, tmp)
        model = model.source
    else:
        weights = _write_torch_weights(model, tmp)
    model.config.to_json_file(str(tmp / "config.json"))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    rebuild = [] if onnx_info else [str(s) for s in spec.steps if get_method(s.method).stage >= STAGE_PRECISION]
    compile_info = extra.pop("compile", None)
    backend = "onnxruntime" if onnx_info else ("inductor" if compile_info is not None else "eager")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "name": spec.name,
        "chain": spec.chain,
        "spec": json.loads(spec.to_json()),
        "params": spec.to_params(),
        "base_model": base_model,
        "parent": parent,
        "kind": kind,
        "architecture": type(model).__name__,
        "num_layers": getattr(model.config, "num_hidden_layers", None),
        "layer_shapes": read_layer_shapes(model),
        "vocab_rows": read_vocab_rows(model),
        "rebuild_steps": rebuild,
        "run_compiled": compile_info is not None,
        "compile": compile_info,
        "backend": backend,
        "runtime": RUNTIME_ONNXRUNTIME if onnx_info else RUNTIME_TORCH,
        "onnx": onnx_info,
        "weights": weights,
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "extra": extra,
    }
    manifest["files"] = {
        p.name: {"sha256": sha256_of(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir()) if p.is_file()
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))


def _write_torch_weights(model: Any, tmp: Path) -> dict[str, Any]:
    """The state dict as safetensors (plain tensors) or a ``weights_only`` torch file (tensor subclasses)."""
    state = model.state_dict()
    if all(_is_plain(v) for v in state.values()):
        from safetensors.torch import save_file

        tensors, sparse, tied = _encode_safetensors(state)
        save_file(tensors, str(tmp / SAFETENSORS_FILE), metadata={"format": "pt"})
        return {"file": SAFETENSORS_FILE, "format": "safetensors", "sparse": sparse, "tied": tied}
    import torch

    torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp / TORCH_FILE)
    return {"file": TORCH_FILE, "format": "torch", "sparse": {}, "tied": {}}


def _write_onnx(export: Any, tokenizer: Any, tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Move the exported graph in as ``model.onnx``; the ONNX runtime needs the fast tokenizer's file."""
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise ConfigError("an ONNX variant needs a fast tokenizer (tokenizer.json) to run without transformers")
    shutil.copyfile(export.onnx_path, tmp / ONNX_FILE)
    if export.workdir is not None:
        export.workdir.cleanup()
    return dict(export.info), {"file": ONNX_FILE, "format": "onnx", "sparse": {}, "tied": {}}


def read_weights(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The state dict of a verified variant (safetensors decoded, or torch.load(weights_only=True))."""
    file = path / manifest["weights"]["file"]
    try:
        if manifest["weights"]["format"] == "safetensors":
            from safetensors.torch import load_file

            return _decode_safetensors(load_file(str(file)), manifest)
        import torch

        torchao_quantization()  # registers torchao's tensor classes as safe globals for weights_only
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except VariantError:
        raise
    except Exception as exc:  # safetensors/torch raise many types for damaged files
        raise VariantError(f"cannot read the weights of variant {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise VariantError(f"variant {path}: {file.name} does not hold a state dict")
    return state


def rebuild_model(path: Path, manifest: dict[str, Any], device: str = "cpu") -> Any:
    """A fresh module with the variant's architecture: config, pruned shapes, precision steps re-applied."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    quiet_transformers()
    config = AutoConfig.from_pretrained(str(path))
    auto = AutoModelForCausalLM if manifest["kind"] == "causal_lm" else AutoModelForSequenceClassification
    if manifest["kind"] == "causal_lm" or manifest.get("extra", {}).get("layer_formats"):
        # Every weight of a causal LM variant is in its file, packed low-bit ones with their format: an empty
        # skeleton (parameters on the meta device, buffers real) takes them by assignment, so no float copy
        # of the model is materialised beside the loaded weights (a replica's RSS is runtime + weights).
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            skeleton = auto.from_config(config, dtype=torch.float32)
        formats = manifest.get("extra", {}).get("layer_formats")
        if formats and manifest["weights"]["format"] == "safetensors":  # packed CPU modules, plain buffers
            from tightfit.compress.lowbit import skeleton_from_formats

            skeleton_from_formats(skeleton, formats)
        return skeleton
    model = auto.from_config(config, dtype=torch.float32)
    if manifest.get("layer_shapes"):
        apply_layer_shapes(model, manifest["layer_shapes"])
    if manifest.get("vocab_rows"):
        from tightfit.compress.vocab import apply_vocab_rows

        apply_vocab_rows(model, int(manifest["vocab_rows"]))
    ctx = ApplyContext(kind=manifest["kind"], device=device)
    for text in manifest.get("rebuild_steps", []):
        step = StepSpec.parse(text)
        info = get_method(step.method)
        model = info.apply(model, info.make_config(dict(step.params)), ctx)
    return model


def load_variant(path: str | Path, device: str | None = None, threads: int | None = None) -> Variant:
    """Verify and load a variant directory on ``device`` (None: the GPU where present) with its runner.

    A torch variant comes back as an eval-mode module (torch threads are the caller's setting); an ONNX
    variant as an ONNX Runtime session on ``threads`` intra-op threads (default: ``TIGHTFIT_THREADS`` or
    the usable cores), loaded without importing torch or transformers.
    """
    from tightfit.compress.runtime import TorchRunner

    root = Path(path)
    manifest = verify_variant(root)
    if runtime_of(manifest) == RUNTIME_ONNXRUNTIME:
        from tightfit.runtime.session import load_onnx_runner

        runner = load_onnx_runner(root, manifest, device=device, threads=threads)
        return Variant(model=None, tokenizer=runner.tokenizer, manifest=manifest, path=root, runner=runner)
    from transformers import AutoTokenizer

    device = pick_device(device)
    model = rebuild_model(root, manifest, device)
    state = read_weights(root, manifest)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise VariantError(f"variant {root}: weights do not fit the rebuilt architecture: {exc}") from None
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(root))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    compiled = bool(manifest.get("run_compiled"))
    torch_runner = TorchRunner(model, tokenizer, kind=manifest["kind"], compiled=compiled,
                               mode=(manifest.get("compile") or {}).get("mode", "default"))
    return Variant(model=model, tokenizer=tokenizer, manifest=manifest, path=root, runner=torch_runner)
