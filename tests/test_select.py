"""select: Pareto front and HardwareTarget constraints on hand-built Footprint records (inputs, not results)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tightfit import names
from tightfit.errors import BudgetError
from tightfit.footprint import Footprint
from tightfit.select.choose import (
    DEFAULT_OBJECTIVES,
    _score,
    dominates,
    fit_reasons,
    pareto_front,
    select_per_tier,
    select_variant,
)
from tightfit.spec import HardwareTarget

MiB = 2**20


def rec(name: str, acc: float, disk_mib: float, rss_mib: float, b1: float, b32: float | None = None, **kw) -> Footprint:
    return Footprint(
        variant=name,
        chain=name,
        accuracy=acc,
        disk_bytes=int(disk_mib * MiB),
        peak_rss_serve_bytes=int(rss_mib * MiB),
        peak_rss_load_bytes=int((rss_mib - 120) * MiB),  # a replica adds Ray's share to this
        latency_ms_b1_p95=b1,
        latency_ms_b32_p95=b32 if b32 is not None else b1 * 20,
        **kw,
    )


@pytest.fixture
def sweep() -> list[Footprint]:
    return [
        rec("fp32", 0.81, 87, 600, 10.0, weight_bytes_per_forward=87 * MiB),
        rec("bf16", 0.80, 44, 420, 4.0, weight_bytes_per_forward=44 * MiB),
        rec("int8_dynamic", 0.79, 56, 380, 4.5, weight_bytes_per_forward=30 * MiB),
        rec("pruned", 0.74, 50, 450, 6.0),  # dominated by bf16 and int8
        rec("student", 0.76, 30, 300, 2.0, weight_bytes_per_forward=20 * MiB),
        Footprint(variant="int4", chain="int4_weight_only", status="failed", error="needs a GPU"),
    ]


def test_pareto_front_drops_dominated_and_failed(sweep: list[Footprint]) -> None:
    front = [r.variant for r in pareto_front(sweep)]
    assert front == ["fp32", "bf16", "int8_dynamic", "student"]
    assert "pruned" not in front and "int4" not in front


def test_front_depends_on_objectives(sweep: list[Footprint]) -> None:
    only_acc_disk = pareto_front(sweep, [(names.ACCURACY, "max"), (names.DISK_BYTES, "min")])
    assert [r.variant for r in only_acc_disk] == ["fp32", "bf16", "student"]


def test_unmeasured_objective_counts_as_worst() -> None:
    a = rec("a", 0.8, 10, 100, 1.0)
    b = rec("b", 0.8, 10, 100, 1.0)
    b.latency_ms_b1_p95 = None
    assert [r.variant for r in pareto_front([a, b])] == ["a"]


def test_memory_limit_also_holds_for_the_serving_replica(sweep: list[Footprint]) -> None:
    """The bare-process peak of int8_dynamic fits 385 MiB, but a Ray Serve replica of it would not: selection
    uses the serving planner's figure, so it never chooses what serving then declines."""
    from tightfit.memory.replica import replica_need_bytes
    from tightfit.serve.plan import plan_serving

    int8 = next(r for r in sweep if r.variant == "int8_dynamic")
    need = replica_need_bytes(int8)
    assert need is not None and int8.peak_rss_serve_bytes < 385 * MiB < need
    why = fit_reasons(int8, HardwareTarget.parse(memory="385MiB"))
    assert len(why) == 1 and "Ray Serve replica needs" in why[0]
    assert fit_reasons(int8, HardwareTarget(memory_bytes=need)) == []
    # the same figure is the planner's threshold (records need a variant dir for the planner)
    plannable = dataclasses.replace(int8, extra={"variant_dir": "/nonexistent"})
    assert plan_serving([plannable], need).primary.name == "int8_dynamic"
    with pytest.raises(BudgetError, match="no variant fits"):
        plan_serving([plannable], need - 2 * MiB)


def test_memory_budget_picks_best_accuracy_that_fits(sweep: list[Footprint]) -> None:
    sel = select_variant(sweep, HardwareTarget.parse(memory="512MiB"))
    assert sel.chosen is not None and sel.chosen.variant == "bf16"
    assert "memory" in sel.reasons["fp32"][0] and "600.0 MiB" in sel.reasons["fp32"][0]
    assert sel.reasons["int4"] == ["failed: needs a GPU"]
    assert [r.variant for r in sel.failed] == ["int4"]
    assert sel.on_front(sel.chosen)


def test_no_limits_picks_the_most_accurate_then_smallest(sweep: list[Footprint]) -> None:
    sel = select_variant(sweep, HardwareTarget())
    assert sel.chosen is not None and sel.chosen.variant == "fp32"
    # equal accuracy: the smaller serving memory wins, then disk.
    tie = [rec("a", 0.8, 40, 500, 3.0), rec("b", 0.8, 50, 400, 3.0), rec("c", 0.8, 45, 400, 3.0)]
    assert select_variant(tie, HardwareTarget()).chosen.variant == "c"  # type: ignore[union-attr]


def test_disk_latency_and_quality_limits(sweep: list[Footprint]) -> None:
    sel = select_variant(sweep, HardwareTarget.parse(disk="40MiB"))
    assert sel.chosen is not None and sel.chosen.variant == "student"
    assert any(w.startswith("disk:") for w in sel.reasons["bf16"])

    sel = select_variant(sweep, HardwareTarget.parse(latency="3ms"))
    assert "latency_ms_b1_p95 4.00 ms > SLO 3 ms" in sel.reasons["bf16"][0]
    assert sel.chosen is None  # the student's 2 ms fits, but not behind one in-flight request (2 x 2 ms)
    assert any("may wait for the one in flight: 2 x" in w for w in sel.reasons["student"])

    sel = select_variant(sweep, HardwareTarget.parse(latency="5ms"))  # the serving planner's check too
    assert sel.chosen is not None and sel.chosen.variant == "student"
    assert any("2 x latency_ms_b1_p95 4.00 ms > SLO 5 ms" in w for w in sel.reasons["bf16"])

    sel = select_variant(sweep, HardwareTarget.parse(disk="40MiB", min_accuracy=0.78))
    assert sel.chosen is None
    assert any(w.startswith("quality:") for w in sel.reasons["student"])
    assert "no variant fits" in sel.summary()


def test_latency_batch_reads_the_bounding_measurement(sweep: list[Footprint]) -> None:
    # batch 8 is bounded by the batch-32 measurement (bf16: 80 ms, student: 40 ms).
    sel = select_variant(sweep, HardwareTarget.parse(latency="50ms", latency_batch=8))
    assert sel.chosen is not None and sel.chosen.variant == "student"
    # batch 64 scales the batch-32 p95 by 2: student 80 ms > 50 ms.
    sel = select_variant(sweep, HardwareTarget.parse(latency="50ms", latency_batch=64))
    assert sel.chosen is None
    assert "x 2 for batch 64" in sel.reasons["student"][0]


def test_bandwidth_limit_against_latency_slo(sweep: list[Footprint]) -> None:
    # 1 GiB/s: fp32 87 MiB -> 85 ms, bf16 43 ms, int8 29 ms, student 20 ms per forward.
    target = HardwareTarget.parse(latency="100ms", bandwidth="1GiB/s")
    assert select_variant(sweep, target).chosen.variant == "fp32"  # type: ignore[union-attr]
    target = HardwareTarget.parse(latency="35ms", bandwidth="1GiB/s")
    sel = select_variant(sweep, target)
    assert sel.chosen is not None and sel.chosen.variant == "int8_dynamic"
    assert any(w.startswith("bandwidth:") for w in sel.reasons["bf16"])
    assert any("weight_bytes_per_forward not measured" in w for w in sel.reasons["pruned"])


def test_perplexity_for_language_models() -> None:
    lms = [
        Footprint(variant="lm-fp32", kind="causal_lm", perplexity=12.0, disk_bytes=500 * MiB, peak_rss_serve_bytes=900 * MiB,
                      peak_rss_load_bytes=850 * MiB),
        Footprint(variant="lm-int8", kind="causal_lm", perplexity=12.5, disk_bytes=200 * MiB, peak_rss_serve_bytes=500 * MiB,
                      peak_rss_load_bytes=350 * MiB),
    ]
    assert select_variant(lms, HardwareTarget()).chosen.variant == "lm-fp32"  # type: ignore[union-attr]
    sel = select_variant(lms, HardwareTarget.parse(memory="600MiB", max_perplexity=13))
    assert sel.chosen is not None and sel.chosen.variant == "lm-int8"
    assert select_variant(lms, HardwareTarget.parse(max_perplexity=11)).chosen is None


def test_unmeasured_limited_figure_does_not_fit() -> None:
    r = Footprint(variant="x", accuracy=0.9, disk_bytes=MiB)
    assert fit_reasons(r, HardwareTarget.parse(memory="1GiB")) == ["memory: peak_rss_serve_bytes not measured"]


def test_report_and_tiers(sweep: list[Footprint]) -> None:
    sel = select_variant(sweep, HardwareTarget.parse(memory="440MiB", compute_flops=1e9))  # int8 needs 431 MiB
    report = sel.to_dict()
    assert report["chosen"] == "int8_dynamic" and report["failed"] == {"int4": "needs a GPU"}
    assert report["front"] == sel.front_names and sel.notes
    tiers = select_per_tier(sweep, tiers=(256 * MiB, 512 * MiB, 1024 * MiB))
    assert 256 * MiB not in tiers
    assert tiers[512 * MiB].variant == "bf16" and tiers[1024 * MiB].variant == "fp32"


# ---- properties ------------------------------------------------------------------------------------

maybe = lambda s: st.one_of(st.none(), s)  # noqa: E731
records_strategy = st.lists(
    st.builds(
        Footprint,
        variant=st.sampled_from([f"v{i}" for i in range(12)]),
        status=st.sampled_from(["ok", "ok", "ok", "failed"]),
        accuracy=maybe(st.sampled_from([0.5, 0.6, 0.7, 0.8, 0.9])),
        disk_bytes=maybe(st.integers(1, 8).map(lambda x: x * 10 * MiB)),
        peak_rss_serve_bytes=maybe(st.integers(1, 8).map(lambda x: x * 100 * MiB)),
        latency_ms_b1_p95=maybe(st.sampled_from([1.0, 2.0, 5.0, 10.0])),
        latency_ms_b32_p95=maybe(st.sampled_from([10.0, 20.0, 50.0, 100.0])),
        weight_bytes_per_forward=maybe(st.integers(1, 8).map(lambda x: x * 10 * MiB)),
    ),
    max_size=10,
)
targets_strategy = st.builds(
    HardwareTarget,
    memory_bytes=maybe(st.integers(1, 9).map(lambda x: x * 100 * MiB)),
    disk_bytes=maybe(st.integers(1, 9).map(lambda x: x * 10 * MiB)),
    latency_ms=maybe(st.sampled_from([1.5, 5.0, 30.0, 200.0])),
    latency_batch=st.sampled_from([1, 8, 32, 64]),
    bandwidth_bytes_per_s=maybe(st.sampled_from([1e9, 1e10])),
    min_accuracy=maybe(st.sampled_from([0.55, 0.75, 0.85])),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=records_strategy, target=targets_strategy)
def test_chosen_fits_and_lies_on_the_front(records: list[Footprint], target: HardwareTarget) -> None:
    sel = select_variant(records, target)
    if sel.chosen is not None:
        assert sel.chosen.ok
        assert fit_reasons(sel.chosen, target) == []
        assert sel.on_front(sel.chosen)
        if target.memory_bytes is not None:
            assert sel.chosen.peak_rss_serve_bytes is not None
            assert sel.chosen.peak_rss_serve_bytes <= target.memory_bytes
    else:
        assert all(fit_reasons(r, target) for r in records)
    assert all(r.ok for r in sel.front)
    assert all(not r.ok for r in sel.failed)
    for r in records:
        assert bool(fit_reasons(r, target)) == (r.variant in sel.reasons and not any(f is r for f in sel.fitting))


@settings(max_examples=200, deadline=None)
@given(records=records_strategy)
def test_front_is_exactly_the_non_dominated_set(records: list[Footprint]) -> None:
    front = pareto_front(records)
    ok = [r for r in records if r.ok]
    scores = {id(r): _score(r, DEFAULT_OBJECTIVES) for r in ok}
    for r in ok:
        dominated = any(dominates(scores[id(o)], scores[id(r)]) for o in ok if o is not r)
        assert dominated != any(f is r for f in front)
    if ok:
        assert front, "a non-empty set always has a non-empty front"
