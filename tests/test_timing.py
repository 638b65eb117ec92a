"""Latency that can be trusted: the same profile measured twice agrees; the spread is recorded; noise is
flagged and judged pessimistically by selection."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tightfit.footprint import Footprint
from tightfit.measure.timing import TimingPlan, percentile, pinned_threads, time_rounds
from tightfit.select.choose import fit_reasons, select_variant
from tightfit.spec import HardwareTarget

# Enough samples that a p50 shrugs off a few preempted passes on a shared machine.
REPEAT_PLAN = TimingPlan(rounds=5, repeats={1: 12, 32: 4}, retries=2)


@pytest.fixture(scope="module")
def small_variant(minilm, tmp_path_factory) -> Path:
    """A 2-layer, 128-wide BERT classifier on MiniLM's tokenizer, saved as a variant (a few ms per pass)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from tightfit.compress.variant import save_variant
    from tightfit.spec import VariantSpec

    config = BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=128, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=512, num_labels=2)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    out = tmp_path_factory.mktemp("small") / "variant"
    return save_variant(model, minilm.tokenizer, out, VariantSpec.parse("fp32", name="small"),
                        base_model="minilm", kind="classifier")


def test_the_same_profile_twice_agrees_within_15_percent(small_variant: Path) -> None:
    """A latency the profiler does not flag as noisy is reproducible: two profiles of one variant taken at the
    same machine speed agree within 15 % on p50. A pair where a figure was flagged (other work shared the
    cores) or where the reference workload says the machine itself ran at another speed (a VM's host busy
    for seconds: on CI a pair under 10 % apart in machine speed read b32 16 % apart) is measured again, up to 6
    pairs of about 2 s each; every flag must rest on evidence the profile recorded."""
    from tightfit.device import cpu_threads
    from tightfit.measure.profile import measure_variant

    pairs, reasons = [], []
    for _ in range(6):
        first, second = (measure_variant(small_variant, None, memory_subprocess=False, timing=REPEAT_PLAN, threads=1)
                         for _ in range(2))
        for fp in (first, second):
            assert fp.measure_rounds == 5 and fp.measure_threads == 1
            assert fp.latency_ms_b1_cv is not None and fp.latency_ms_b32_cv is not None
            assert fp.load_avg_1m is not None and fp.load_avg_1m >= 0
            assert fp.noise is not None  # timed: "" when clean, else the noisy figures
            assert len(fp.extra["latency_ms_b1_round_p50"]) == 5 and len(fp.extra["measure_cpus"]) == 1
            assert fp.latency_ms_b1_p50 <= fp.latency_ms_b1_p95 <= fp.latency_ms_b1_p99  # type: ignore[operator]
            assert fp.extra["measure_probe_ms"] > 0
        pairs.append((first, second))
        speeds = sorted(fp.extra["measure_probe_ms"] for fp in (first, second))
        if speeds[1] / speeds[0] > 1.05:
            reasons.append(f"machine speed changed: reference workload {speeds[0]:.3f} vs {speeds[1]:.3f} ms")
            continue
        trusted = [m for m in ("latency_ms_b1_p50", "latency_ms_b32_p50")
                   if not (first.is_noisy(m) or second.is_noisy(m))]
        for metric in trusted:
            a, b = getattr(first, metric), getattr(second, metric)
            assert abs(a - b) / min(a, b) <= 0.15, (metric, a, b, speeds, [
                {k: fp.extra[k] for k in ("measure_other_cores", "measure_probe_ms", f"{metric[:-4]}_cpu_share")}
                | {"cv": getattr(fp, f"{metric[:-4]}_cv"), "rounds": fp.extra[f"{metric[:-4]}_round_p50"]}
                for fp in (first, second)])
        if len(trusted) == 2:
            return
        reasons.append(f"flagged noisy: {first.noise or '-'} / {second.noise or '-'}")
    # No pair could be judged: each flag must rest on evidence the profiler recorded (spread, a core taken
    # from the timing thread, or other work busy on the machine), never on nothing.
    plan = REPEAT_PLAN
    for fp in (fp for pair in pairs for fp in pair):
        for figure in fp.noisy_figures:
            evidence = (getattr(fp, f"{figure}_cv") > plan.threshold,
                        fp.extra[f"{figure}_cpu_share"] < plan.min_cpu_share,
                        fp.extra["measure_other_cores"] > plan.max_other_cores)
            assert any(evidence), (figure, evidence, fp.extra)
    pytest.skip(f"no pair measured alone at one machine speed on {cpu_threads()} cores: {'; '.join(reasons)}")


def test_pinned_threads_restores_affinity_and_threads() -> None:
    import torch

    before_cpus, before_threads = os.sched_getaffinity(0), torch.get_num_threads()
    with pinned_threads(1) as cpus:
        assert os.sched_getaffinity(0) == set(cpus) and len(cpus) == 1
        assert torch.get_num_threads() == 1
    assert os.sched_getaffinity(0) == before_cpus and torch.get_num_threads() == before_threads


def test_a_spread_above_the_threshold_is_remeasured_then_flagged() -> None:
    calls = {"n": 0}

    def unsteady() -> None:  # every third round-of-passes is 4x slower: a CV far above 10 %
        calls["n"] += 1
        time.sleep(0.008 if (calls["n"] // 2) % 3 == 0 else 0.002)

    def steady() -> None:
        time.sleep(0.003)

    # the steady call gets 3 passes a round: one late wake-up (a loaded CI runner) cannot move its median
    plan = TimingPlan(rounds=3, repeats={1: 2, 32: 3}, warmup=0, retries=1)
    result = time_rounds({1: unsteady, 32: steady}, plan, threads=1, check_cpu_share=False)
    assert result.attempts == 2  # measured again once, still noisy
    assert result.noisy == [1]
    assert result.stats[1].cv > 0.10 and result.stats[32].cv < 0.10
    assert 0 < result.stats[32].cpu_share < 0.5  # a sleeping call holds no core: flagged as not measured alone
    assert len(result.stats[1].round_p50_ms) == 3 and len(result.stats[1].samples_ms) == 6
    assert len(result.stats[32].samples_ms) == 9

    calm_plan = TimingPlan(rounds=3, repeats={1: 3}, warmup=0, retries=2)
    calm = time_rounds({1: steady}, calm_plan, threads=1, check_cpu_share=False)
    assert calm.noisy == [] and calm.stats[1].cv < 0.10  # a late wake-up may cost a re-measurement, not a flag
    # the same steady call, judged as CPU work: it slept off its core, so it was not measured alone
    assert time_rounds({1: steady}, calm_plan, threads=1).noisy == [1]


def _spin() -> None:
    end = time.perf_counter() + 0.004
    while time.perf_counter() < end:
        pass


def test_a_busy_neighbour_is_flagged_though_the_rounds_agree() -> None:
    """Another process busy on the machine slows every round alike (no spread) on an SMT sibling or a shared
    virtual CPU; the machine's counters show it, so the latency is flagged, not trusted."""
    import subprocess
    import sys

    plan = TimingPlan(rounds=3, repeats={1: 10}, warmup=1, retries=0)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("one core: a neighbour would share the timing core itself (the CPU-share check's case)")
    neighbour = subprocess.Popen(
        [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cores[-1]}}})\nwhile True: pass"])
    try:
        time.sleep(0.5)  # the loop is spinning before the timing starts
        busy = time_rounds({1: _spin}, plan, threads=1)
    finally:
        neighbour.kill()
        neighbour.wait()
    assert busy.stats[1].other_cores > 0.7, busy.stats[1]
    assert busy.noisy == [1]
    calm = time_rounds({1: _spin}, plan, threads=1)
    assert calm.stats[1].other_cores < busy.stats[1].other_cores - 0.5


def test_percentile_interpolates_like_numpy() -> None:
    import numpy as np

    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    for q in (0, 50, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def _record(name: str, noise: str) -> Footprint:
    return Footprint(variant=name, accuracy=0.8, disk_bytes=10, peak_rss_serve_bytes=100, latency_ms_b1_p50=20,
                     latency_ms_b1_p95=40, latency_ms_b1_p99=120, latency_ms_b32_p95=300, latency_ms_b1_cv=0.3,
                     load_avg_1m=3.5, noise=noise, weight_bytes_per_forward=5)


def test_a_noisy_latency_is_judged_at_p99_and_reported() -> None:
    target = HardwareTarget(latency_ms=100)
    clean, noisy = _record("clean", ""), _record("noisy", "latency_ms_b1")
    assert noisy.is_noisy("latency_ms_b1_p95") and not noisy.is_noisy("latency_ms_b32_p95")
    assert fit_reasons(clean, target) == []
    why = fit_reasons(noisy, target)
    assert why and all("noisy" in w and "p99" in w for w in why), why
    selection = select_variant([clean, noisy], target)
    assert selection.chosen is not None and selection.chosen.variant == "clean"
    assert any("noisy" in n and "cv 0.30" in n and "load average 3.50" in n for n in selection.notes)
    # a noisy figure whose pessimistic end still meets the limit can be chosen
    assert select_variant([noisy], HardwareTarget(latency_ms=300)).chosen is not None


def test_a_task_beside_others_takes_its_share_of_the_cores(monkeypatch) -> None:
    """``task_threads``: the local runner's share where set (never above what the process may use), else every
    core; ``cpu_threads`` never exceeds the affinity nor a cgroup CPU limit."""
    from tightfit.device import cgroup_cpu_limit, cpu_threads, task_threads

    affinity = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    assert cpu_threads() == (min(affinity, limit) if limit else affinity)
    monkeypatch.delenv("TIGHTFIT_LOOP_THREADS", raising=False)
    assert task_threads() == cpu_threads()
    monkeypatch.setenv("TIGHTFIT_LOOP_THREADS", "1")
    assert task_threads() == 1
    monkeypatch.setenv("TIGHTFIT_LOOP_THREADS", str(cpu_threads() + 8))
    assert task_threads() == cpu_threads()
    monkeypatch.setenv("TIGHTFIT_LOOP_THREADS", "zero")
    assert task_threads() == cpu_threads()
