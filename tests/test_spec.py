"""Variant specs and hardware targets: parsing, canonical form, and clear errors."""

from __future__ import annotations

import pytest

from tightfit.errors import ConfigError
from tightfit.spec import HardwareTarget, StepSpec, VariantSpec
from tightfit.units import format_bytes, parse_bytes, parse_millis


def test_parse_chain_round_trips() -> None:
    spec = VariantSpec.parse("prune_structured:heads=0.5,ffn=0.5|distill:epochs=2|int8_dynamic", name="s")
    assert [s.method for s in spec.steps] == ["prune_structured", "distill", "int8_dynamic"]
    assert spec.steps[0].params == {"heads": 0.5, "ffn": 0.5}
    assert spec.steps[1].params == {"epochs": 2}
    again = VariantSpec.parse(spec.chain, name="s")
    assert again == spec and again.cache_key() == spec.cache_key()
    assert VariantSpec.from_json(spec.to_json()) == spec
    params = spec.to_params()
    assert params["chain"] == spec.chain and params["step0.heads"] == "0.5"


def test_baseline_and_names() -> None:
    assert VariantSpec.parse("fp32").steps == ()
    assert VariantSpec.parse("baseline").name == "fp32"
    for empty in ("", "  "):  # an empty spec is a mistake, never a silent fp32 copy
        with pytest.raises(ConfigError, match=r"spec is empty.*'fp32'"):
            VariantSpec.parse(empty)
    with pytest.raises(ConfigError, match="variant name"):
        VariantSpec.parse("bf16", name="bad name!")


@pytest.mark.parametrize("text", ["int8:bits", "prune:=3", "|bf16"])
def test_malformed_steps(text: str) -> None:
    with pytest.raises(ConfigError):
        VariantSpec.parse(text)


def test_step_scalars() -> None:
    step = StepSpec.parse("m:a=1,b=0.25,c=true,d=name")
    assert step.params == {"a": 1, "b": 0.25, "c": True, "d": "name"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1Gi", 2**30), ("1GiB", 2**30), ("500MB", 500_000_000), ("500M", 500_000_000), ("2Gi", 2 * 2**30),
     (1024, 1024), ("1.5KiB", 1536), ("10B", 10), ("1 gib", 2**30), ("4k", 4000), ("1e3MB", 10**9)],
)
def test_parse_bytes(value, expected) -> None:
    """One rule: units ending in B are byte units (ByteSize), other suffixes Kubernetes quantities."""
    assert parse_bytes(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [("-1GiB", "negative"), ("12", "'12' has no unit"), ("512", "no unit"), ("10m", "'m' means milli"),
     ("3 parsecs", "unknown unit"), ("lots", "cannot read"), ("1e400GiB", "larger than any machine"),
     (True, "expected a size"), (-3, "negative")],
)
def test_parse_bytes_errors(value, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_bytes(value, field="memory")


def test_a_person_must_write_the_unit() -> None:
    assert parse_bytes(12) == 12  # code may pass a byte count
    with pytest.raises(ConfigError, match="memory: 12 has no unit; write '12MiB'"):
        parse_bytes(12, field="memory", require_unit=True)


def test_units_format_and_time() -> None:
    assert format_bytes(90.9 * 2**20) == "90.9 MiB"
    assert parse_millis("1.5s") == 1500.0 and parse_millis(20) == 20.0
    with pytest.raises(ConfigError):
        parse_millis("-3ms")


def test_hardware_target_parses_units() -> None:
    target = HardwareTarget.parse(memory="1GiB", disk="200MB", latency="50ms", bandwidth="10GB/s", min_accuracy=0.8)
    assert target.memory_bytes == 2**30 and target.disk_bytes == 200_000_000
    assert target.latency_ms == 50.0 and target.bandwidth_bytes_per_s == 10e9
    assert "memory <= 1.0 GiB" in target.describe()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"memory": "-1GiB"}, "negative"),
        ({"memory": "512"}, "no unit"),
        ({"min_accuracy": 85}, "did you mean 0.85"),
        ({"min_accuracy": 0.8, "max_perplexity": 20}, "contradict"),
        ({"latency": "0ms"}, "positive"),
        ({"memory_limit": "1GiB"}, "memory_limit"),
    ],
)
def test_hardware_target_errors(values, message) -> None:
    with pytest.raises(ConfigError, match=message):
        HardwareTarget.parse(**values)
