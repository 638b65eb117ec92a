"""Footprints measured for real: parameters, bytes, fresh-process peak RSS, latency, quality, ratios."""

from __future__ import annotations

import os

import pytest

from tightfit.compress import build_variant
from tightfit.compress.variant import load_variant
from tightfit.measure.profile import evaluate, measure_variant
from tightfit.measure.quality import f1_macro
from tightfit.settings import MODEL_THREAD_PREFIX
from tightfit.spec import VariantSpec

if os.environ.get("TIGHTFIT_THREADS"):
    import torch as _torch

    _torch.set_num_threads(int(os.environ["TIGHTFIT_THREADS"]))


def test_f1_macro_matches_hand_computed_values():
    assert f1_macro([1, 1, 0, 0], [1, 1, 0, 0]) == 1.0
    # class 1: tp=1 fp=1 fn=1 -> 0.5; class 0: tp=1 fp=1 fn=1 -> 0.5
    assert f1_macro([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
    assert f1_macro([0, 0, 0, 1], [0, 0, 0, 0]) == pytest.approx((6 / 7 + 0) / 2)


def test_finetuned_fixture_beats_the_majority_class(finetuned_minilm_dir, rt_data):
    variant = load_variant(finetuned_minilm_dir)
    frame = rt_data.test.head(256)
    quality = evaluate(variant.model, variant.tokenizer, frame, "classifier", batch_size=32)
    majority = max(frame["label"].mean(), 1 - frame["label"].mean())
    assert quality["accuracy"] >= majority + 0.08
    assert 0.5 < quality["f1_macro"] <= 1.0


@pytest.fixture(scope="module")
def fp32_footprint(finetuned_minilm_dir, rt_data):
    return measure_variant(finetuned_minilm_dir, rt_data, quick=True, eval_rows=128)


def test_measure_variant_fills_every_cpu_field(fp32_footprint, finetuned_minilm_dir):
    fp = fp32_footprint
    assert fp.ok and fp.backend == "eager" and not fp.compiled and fp.device == "cpu"
    assert fp.params_total == 22_713_986 and fp.params_nonzero == pytest.approx(fp.params_total, rel=0.001)
    assert fp.disk_bytes == (finetuned_minilm_dir / "model.safetensors").stat().st_size
    # fresh subprocess: libraries alone take a few hundred MB, the fp32 weights another ~90 MB
    assert fp.peak_rss_load_bytes >= fp.extra["rss_imports_bytes"] > 100e6
    assert fp.extra["rss_now_load_bytes"] - fp.extra["rss_now_imports_bytes"] > 60e6
    assert fp.peak_rss_serve_bytes >= fp.peak_rss_load_bytes
    # loaded and served on a worker thread named like the replica's model thread (its malloc arena counts)
    assert fp.extra["model_thread"].startswith(MODEL_THREAD_PREFIX)
    assert 0 < fp.latency_ms_b1_p50 <= fp.latency_ms_b1_p99
    assert fp.latency_ms_b32_p50 > fp.latency_ms_b1_p50
    assert fp.throughput_sps == pytest.approx(32_000 / fp.latency_ms_b32_p50)
    # quick: 3 interleaved rounds on pinned threads, their spread and the noise check recorded
    assert fp.measure_rounds == 3 and fp.latency_ms_b1_cv is not None and fp.latency_ms_b32_cv is not None
    assert fp.noise is not None and 0 < fp.measure_cpu_share <= 1 and fp.load_avg_1m is not None
    assert 0.6 < fp.accuracy <= 1.0 and fp.f1_macro is not None
    # encoder + head weights in full, 64 rows of each embedding table
    assert 40e6 < fp.weight_bytes_per_forward < 50e6
    assert fp.gpu_peak_bytes is None


def test_int8_footprint_against_the_baseline(fp32_footprint, finetuned_minilm_dir, rt_data, tmp_path):
    out = build_variant(finetuned_minilm_dir, VariantSpec.parse("int8_dynamic|int8_embeddings", name="int8-all"),
                        tmp_path / "int8", progress=False)
    fp = measure_variant(out, rt_data, quick=True, eval_rows=128, memory_subprocess=False,
                         baseline=fp32_footprint)
    assert fp.params_total == fp32_footprint.params_total  # quantized weights still count
    assert fp.compression_ratio is not None and fp.compression_ratio > 3.5
    assert fp.weight_bytes_per_forward < 0.3 * fp32_footprint.weight_bytes_per_forward
    assert fp.accuracy_drop is not None and abs(fp.accuracy_drop) <= 3.0  # points, on 128 rows
    assert fp.peak_rss_load_bytes is None  # not asked for


def test_sparse_variant_reports_compressed_bytes(finetuned_minilm_dir, rt_data, tmp_path):
    out = build_variant(finetuned_minilm_dir, VariantSpec.parse("prune_unstructured:sparsity=0.5"),
                        tmp_path / "sparse", progress=False)
    fp = measure_variant(out, None, quick=True, memory_subprocess=False)
    assert fp.params_nonzero is not None and fp.params_total is not None and fp.disk_bytes is not None
    assert fp.params_nonzero < 0.8 * fp.params_total
    assert fp.disk_bytes_compressed is not None and fp.disk_bytes_compressed < fp.disk_bytes
    assert fp.accuracy is None  # no data, no quality figures
