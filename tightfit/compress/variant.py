"""A variant directory: manifest + weights that load back anywhere, without pickled Python objects.

Layout::

    manifest.json      spec, base model, parent, kind, per-layer shapes, kept vocabulary rows, rebuild steps,
                       versions, checksums
    config.json        the HF config (layer count already reduced by layer dropping)
    tokenizer files    tokenizer.save_pretrained
    model.safetensors  plain tensors (sparse ones as values + bit mask), or
    weights.pt         a state dict of torchao tensor subclasses, read with torch.load(weights_only=True)

``load_variant`` rebuilds the architecture from the config, resizes pruned layers (and a pruned vocabulary),
re-applies the precision steps (casts, quantization) to the fresh module, then loads the weights with
``load_state_dict(assign=True)``. Any missing, truncated or altered file is a ``VariantError``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
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
from tightfit.errors import VariantError
from tightfit.spec import StepSpec, VariantSpec

FORMAT = "tightfit-variant/1"
MANIFEST = "manifest.json"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "weights.pt"
SPARSE_MIN_ZEROS = 0.25  # store a tensor sparse when at least this fraction is zero
_VALUES, _MASK = ".__sparse_values__", ".__sparse_mask__"
VERSIONED = ("tightfit", "torch", "transformers", "torchao", "safetensors")


@dataclass
class Variant:
    """A loaded variant: an eval-mode model plus what it is."""

    model: Any
    tokenizer: Any
    manifest: dict[str, Any]
    path: Path

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    """Write the variant directory atomically (a ``.partial`` sibling renamed into place); returns its path."""
    from tightfit.compress.vocab import read_vocab_rows

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise VariantError(f"{out} exists and is not a variant directory; choose an empty or new --out")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    extra = dict(extra or {})
    state = model.state_dict()
    weights: dict[str, Any]
    if all(_is_plain(v) for v in state.values()):
        from safetensors.torch import save_file

        tensors, sparse, tied = _encode_safetensors(state)
        save_file(tensors, str(tmp / SAFETENSORS_FILE), metadata={"format": "pt"})
        weights = {"file": SAFETENSORS_FILE, "format": "safetensors", "sparse": sparse, "tied": tied}
    else:
        import torch

        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp / TORCH_FILE)
        weights = {"file": TORCH_FILE, "format": "torch", "sparse": {}, "tied": {}}
    model.config.to_json_file(str(tmp / "config.json"))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    rebuild = [str(s) for s in spec.steps if get_method(s.method).stage >= STAGE_PRECISION]
    compile_info = extra.pop("compile", None)
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
        "backend": "inductor" if compile_info is not None else "eager",
        "weights": weights,
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "extra": extra,
    }
    manifest["files"] = {
        p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir()) if p.is_file()
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a variant directory (no checksum check); a missing or bad one is a VariantError."""
    root = Path(path)
    file = root / MANIFEST
    if not root.is_dir():
        raise VariantError(f"variant directory {root} does not exist")
    if not file.is_file():
        raise VariantError(f"{root} is not a variant directory (no {MANIFEST}); build one with `tightfit compress`")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VariantError(f"{file} is corrupt ({exc}); rebuild the variant") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise VariantError(f"{file} is not a {FORMAT} manifest; rebuild the variant with this tightfit")
    return manifest


def verify_variant(path: str | Path) -> dict[str, Any]:
    """Check every file against the manifest (present, full length, sha256); return the manifest."""
    root = Path(path)
    manifest = read_manifest(root)
    for name, info in manifest.get("files", {}).items():
        file = root / name
        if not file.is_file():
            raise VariantError(f"variant {root} is incomplete: {name} is missing; rebuild the variant")
        size = file.stat().st_size
        if size != info["bytes"]:
            raise VariantError(
                f"variant {root}: {name} is {size} bytes, the manifest says {info['bytes']} (truncated or "
                "altered); rebuild the variant"
            )
        if _sha256(file) != info["sha256"]:
            raise VariantError(f"variant {root}: checksum mismatch for {name} (corrupt); rebuild the variant")
    if manifest["weights"]["file"] not in manifest.get("files", {}):
        raise VariantError(f"variant {root}: the manifest lists no checksum for its weights file")
    return manifest


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


def load_variant(path: str | Path, device: str | None = None) -> Variant:
    """Verify, rebuild and load a variant directory; the model comes back in eval mode on ``device``."""
    from transformers import AutoTokenizer

    root = Path(path)
    manifest = verify_variant(root)
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
    return Variant(model=model, tokenizer=tokenizer, manifest=manifest, path=root)
