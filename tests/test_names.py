"""tightfit.names: every footprint field has its constant, and the alias helpers are consistent."""

from __future__ import annotations

import dataclasses

import pytest

from tightfit import names
from tightfit.errors import ConfigError
from tightfit.footprint import METRIC_FIELDS, Footprint


def _constants() -> dict[str, str]:
    return {k: v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}


def test_every_footprint_metric_has_a_constant() -> None:
    values = set(_constants().values())
    missing = [m for m in METRIC_FIELDS if m not in values]
    assert not missing, f"add constants to tightfit/names.py for {missing}"
    assert names.FOOTPRINT_METRICS == METRIC_FIELDS


def test_footprint_metrics_are_the_record_fields() -> None:
    record = Footprint(variant="v", params_total=10, disk_bytes=20, accuracy=0.9, compiled=True)
    assert set(record.metrics()) <= set(names.FOOTPRINT_METRICS)
    fields = {f.name for f in dataclasses.fields(Footprint)}
    assert set(names.FOOTPRINT_METRICS) | names.FOOTPRINT_LABEL_FIELDS == fields


def test_metric_names_are_unique_across_groups() -> None:
    groups = [names.FOOTPRINT_METRICS, names.TRAINING_METRICS, names.SERVING_METRICS, names.PARENT_METRICS]
    flat = [n for g in groups for n in g]
    assert len(flat) == len(set(flat))


def test_tags_are_namespaced() -> None:
    tags = [v for k, v in _constants().items() if k.startswith("TAG_")]
    assert tags and all(t.startswith("tightfit.") for t in tags)
    assert len(tags) == len(set(tags))


def test_worker_and_step_names() -> None:
    assert names.worker_metric(1, names.PEAK_RSS_BYTES) == "worker1.peak_rss_bytes"
    assert names.step_param(0, "method") == "step0.method"
    with pytest.raises(ValueError):
        names.worker_metric(-1, names.PEAK_RSS_BYTES)


def test_latency_metric_names() -> None:
    assert names.latency_metric(32, 95) == names.LATENCY_MS_B32_P95
    assert names.latency_metric(1, 50) == names.LATENCY_MS_B1_P50
    with pytest.raises(ConfigError, match="measured batches"):
        names.latency_metric(7)


def test_budget_aliases() -> None:
    assert names.budget_alias(512 * 2**20) == "fits-512mib"
    assert names.budget_alias(2**30) == "fits-1gib"
    assert names.tier_for_budget(600 * 2**20) == 512 * 2**20
    assert names.alias_for_budget(600 * 2**20) == "fits-512mib"
    assert names.alias_for_budget(2**20) is None
    aliases = [names.budget_alias(t) for t in names.BUDGET_TIERS_BYTES]
    assert len(set(aliases)) == len(aliases)
    assert names.model_uri("m", "champion") == "models:/m@champion"
