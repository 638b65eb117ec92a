"""The pipeline config file: profiles, defaults and one clear error per kind of mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tightfit.config import DEFAULT_CONFIG, config_from_dict, load_config
from tightfit.errors import ConfigError


def _base(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "model": "minilm",
        "dataset": "rotten_tomatoes",
        "variants": [{"variant": "fp32", "chain": "fp32"}, {"variant": "b16", "chain": "bf16"}],
        "target": {"memory": "600MiB", "min_accuracy": 0.6},
    }
    raw.update(over)
    return raw


def test_default_file_and_quick_profile() -> None:
    full = load_config()
    quick = load_config(profile="quick")
    assert full.profile == "full" and quick.profile == "quick"
    # The full profile sweeps the compression library's default set; quick is a small subset.
    from tightfit.compress import default_variant_set

    assert [v.variant for v in full.variants] == [s.name for s in default_variant_set("classifier")]
    assert 0 < len(quick.variants) < len(full.variants)
    assert quick.data.limit is not None and (full.data.limit is None or quick.data.limit < full.data.limit)
    assert quick.target == full.target  # profiles change the work, not the budget
    assert full.target.memory_bytes == 2**30
    for item in quick.loop_items():
        assert set(item) == {"variant", "chain"} and all(isinstance(v, str) for v in item.values())


def test_profile_deep_merges_and_unknown_profile_is_clear() -> None:
    raw = _base(data={"limit": 1000, "test": 0.25}, profiles={"tiny": {"data": {"limit": 10}}})
    cfg = config_from_dict(raw, profile="tiny")
    assert cfg.data.limit == 10 and cfg.data.test == 0.25
    with pytest.raises(ConfigError, match=r"unknown profile 'huge'.*tiny"):
        config_from_dict(raw, profile="huge")


def test_unknown_method_lists_known_ones() -> None:
    raw = _base(variants=[{"variant": "x", "chain": "int3_magic"}])
    with pytest.raises(ConfigError, match=r"variants\[0\].*unknown compression method 'int3_magic'.*known methods:.*bf16"):
        config_from_dict(raw)


def test_parameter_out_of_range_names_the_variant() -> None:
    raw = _base(variants=[{"variant": "bad-sparsity", "chain": "prune_unstructured:sparsity=1.5"}])
    with pytest.raises(ConfigError, match=r"bad-sparsity.*prune_unstructured"):
        config_from_dict(raw)


def test_unknown_parameter_lists_the_methods_parameters() -> None:
    raw = _base(variants=[{"variant": "q", "chain": "int8_dynamic:bits=3"}])
    with pytest.raises(ConfigError, match=r"has no parameter.*bits"):
        config_from_dict(raw)


def test_wrong_order_chain_is_refused() -> None:
    raw = _base(variants=[{"variant": "backwards", "chain": "int8_dynamic|prune_unstructured:sparsity=0.5"}])
    with pytest.raises(ConfigError, match="cannot come after"):
        config_from_dict(raw)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"memory": "-1GiB"}, "must not be negative"),
        ({"memory": "500"}, "has no unit"),
        ({"disk": -5}, "must not be negative"),
        ({"latency": "0ms"}, "positive"),
        ({"min_accuracy": 85}, "did you mean 0.85"),
        ({"memory": "1GiB", "mem": "2GiB"}, "mem: unknown key"),
    ],
)
def test_bad_budgets(target: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_base(target=target))


def test_loop_items_never_use_name_key_and_names_are_unique() -> None:
    with pytest.raises(ConfigError, match=r"variants\.0\.name: unknown key"):
        config_from_dict(_base(variants=[{"name": "fp32", "chain": "fp32"}]))
    with pytest.raises(ConfigError, match="used twice"):
        config_from_dict(_base(variants=[{"variant": "a", "chain": "fp32"}, {"variant": "a", "chain": "bf16"}]))
    with pytest.raises(ConfigError, match="at least one"):
        config_from_dict(_base(variants=[]))


def test_dataset_file_columns_are_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("text,label\n" + "".join(f"nice film {i},1\nbad film {i},0\n" for i in range(15)))
    assert config_from_dict(_base(dataset=str(good))).dataset == str(good)
    bad = tmp_path / "bad.csv"
    bad.write_text("review,score\nnice film,1\n")
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['text', 'label'\].*review"):
        config_from_dict(_base(dataset=str(bad)))
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"text": "x", "y": 1}\n')
    with pytest.raises(ConfigError, match=r"\['label'\]"):
        config_from_dict(_base(dataset=str(jsonl)))
    with pytest.raises(ConfigError, match="does not exist"):
        config_from_dict(_base(dataset=str(tmp_path / "missing.csv")))
    with pytest.raises(ConfigError, match="neither a built-in"):
        config_from_dict(_base(dataset="imdb"))


def test_other_fields_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"finetune.workers: Input should be greater than 0"):
        config_from_dict(_base(finetune={"workers": 0}))
    with pytest.raises(ConfigError, match=r"finetune.memory_budget: '4' has no unit"):
        config_from_dict(_base(finetune={"memory_budget": "4"}))
    with pytest.raises(ConfigError, match=r"finetune.memory_budget: 4096 has no unit"):
        config_from_dict(_base(finetune={"memory_budget": 4096}))
    with pytest.raises(ConfigError, match=r"finetune: set model -> model at the top level"):
        config_from_dict(_base(finetune={"model": "smollm2"}))
    with pytest.raises(ConfigError, match=r"target: memory: 512 has no unit; write '512MiB'"):
        config_from_dict(_base(target={"memory": 512}))
    with pytest.raises(ConfigError, match=r"target: latency: 50 has no unit; write '50ms'"):
        config_from_dict(_base(target={"latency": 50}))
    with pytest.raises(ConfigError, match=r"finetune.lr: Input should be a finite number"):
        config_from_dict(_base(finetune={"lr": float("inf")}))
    with pytest.raises(ConfigError, match=r"finetune.ingest: Input should be 'auto', 'memory' or 'ray_data'"):
        config_from_dict(_base(finetune={"ingest": "disk"}))
    with pytest.raises(ConfigError, match=r"data.limit must be positive"):
        config_from_dict(_base(data={"limit": -3}))
    with pytest.raises(ConfigError, match="modle: unknown key"):
        config_from_dict({**_base(), "modle": "minilm"})
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_default_file_is_plain_yaml_with_both_profiles() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert set(raw["profiles"]) == {"quick", "full"}
    assert "name" not in str([list(v) for v in raw["profiles"]["quick"]["variants"]])
