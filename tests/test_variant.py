"""Variant directories: manifest contents, exact round trips, and clear errors for damaged dirs."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import tightfit
from tightfit.compress.variant import MANIFEST, load_variant, read_manifest, save_variant
from tightfit.errors import VariantError
from tightfit.spec import VariantSpec

if os.environ.get("TIGHTFIT_THREADS"):
    import torch as _torch

    _torch.set_num_threads(int(os.environ["TIGHTFIT_THREADS"]))


class Pickled:
    """An arbitrary Python object: loading it would need unpickling code, which weights_only refuses."""


@pytest.fixture
def variant_copy(finetuned_minilm_dir, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(finetuned_minilm_dir, target)
    return target


def test_manifest_records_spec_lineage_versions_and_checksums(finetuned_minilm_dir):
    manifest = read_manifest(finetuned_minilm_dir)
    assert manifest["chain"] == "fp32" and manifest["kind"] == "classifier"
    assert manifest["base_model"] == "minilm" and manifest["parent"] is None
    assert manifest["layer_shapes"] == [{"heads": 12, "ffn": 1536}] * 6
    assert manifest["versions"]["torch"] == torch.__version__.split("+")[0] or manifest["versions"]["torch"]
    files = manifest["files"]
    assert "model.safetensors" in files and len(files["model.safetensors"]["sha256"]) == 64
    assert files["model.safetensors"]["bytes"] == (finetuned_minilm_dir / "model.safetensors").stat().st_size


def test_load_variant_gives_identical_predictions(finetuned_minilm_dir, rt_data, tmp_path):
    first = tightfit.load_variant(finetuned_minilm_dir)
    assert not first.model.training and first.kind == "classifier" and first.spec.chain == "fp32"
    texts = rt_data.test["text"].tolist()[:16]
    enc = dict(first.tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.inference_mode():
        expected = first.model(**enc).logits
    out = save_variant(first.model, first.tokenizer, tmp_path / "again", VariantSpec.parse("fp32", name="again"),
                       base_model="minilm", kind="classifier", parent=str(finetuned_minilm_dir))
    again = load_variant(out)
    with torch.inference_mode():
        assert torch.equal(again.model(**enc).logits, expected)
    assert again.manifest["parent"] == str(finetuned_minilm_dir)


def test_flipped_byte_is_a_checksum_error(variant_copy):
    weights = variant_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(VariantError, match=r"checksum mismatch for model\.safetensors"):
        load_variant(variant_copy)


def test_truncated_weights_are_a_clear_error(variant_copy):
    weights = variant_copy / "model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size // 3)
    with pytest.raises(VariantError, match="truncated or altered"):
        load_variant(variant_copy)


def test_missing_or_corrupt_manifest_and_missing_files(variant_copy, tmp_path):
    (variant_copy / "config.json").unlink()
    with pytest.raises(VariantError, match=r"config\.json is missing"):
        load_variant(variant_copy)
    (variant_copy / MANIFEST).write_text("{not json")
    with pytest.raises(VariantError, match="corrupt"):
        read_manifest(variant_copy)
    (variant_copy / MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(VariantError, match="not a tightfit-variant/1 manifest"):
        read_manifest(variant_copy)
    with pytest.raises(VariantError, match="does not exist"):
        load_variant(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(VariantError, match=r"no manifest\.json"):
        load_variant(tmp_path / "plain")


def test_consistent_but_wrong_weights_are_caught_without_pickle(variant_copy):
    """Weights holding a pickled object, with a matching checksum: weights_only refuses it clearly."""
    import hashlib

    manifest = json.loads((variant_copy / MANIFEST).read_text())
    evil = variant_copy / "weights.pt"
    torch.save({"x": Pickled()}, evil)
    manifest["weights"] = {"file": "weights.pt", "format": "torch", "sparse": {}, "tied": {}}
    manifest["files"]["weights.pt"] = {"sha256": hashlib.sha256(evil.read_bytes()).hexdigest(),
                                       "bytes": evil.stat().st_size}
    (variant_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(VariantError, match="cannot read the weights"):
        load_variant(variant_copy)


def test_refuses_to_overwrite_a_non_variant_directory(finetuned_minilm_dir, tmp_path):
    variant = load_variant(finetuned_minilm_dir)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(VariantError, match="not a variant directory"):
        save_variant(variant.model, variant.tokenizer, tmp_path / "mine", VariantSpec.parse("fp32"),
                     base_model="minilm", kind="classifier")
    assert (tmp_path / "mine" / "notes.txt").exists()
