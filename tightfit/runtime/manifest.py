"""The variant directory's manifest and checksums, read without torch, transformers or pydantic: what every
loader checks first (``compress.variant`` for torch variants, ``session`` for ONNX ones).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tightfit.errors import VariantError
from tightfit.names import RUNTIME_TORCH

FORMAT = "tightfit-variant/1"
MANIFEST = "manifest.json"


def runtime_of(manifest: dict[str, Any]) -> str:
    """The runtime a variant runs on (manifests written before runtimes were recorded are torch)."""
    return str(manifest.get("runtime") or RUNTIME_TORCH)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        if sha256_of(file) != info["sha256"]:
            raise VariantError(f"variant {root}: checksum mismatch for {name} (corrupt); rebuild the variant")
    if manifest["weights"]["file"] not in manifest.get("files", {}):
        raise VariantError(f"variant {root}: the manifest lists no checksum for its weights file")
    return manifest
