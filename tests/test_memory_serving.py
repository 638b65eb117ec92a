"""The serving memory model: shapes from real configs, KV-cache arithmetic, fitting real-looking points."""

from __future__ import annotations

import pytest

from tightfit.errors import ConfigError
from tightfit.memory.serving import (
    ArchInfo,
    CalibrationPoint,
    MeasuredForward,
    ServingMemoryModel,
    activation_dtype_bytes,
    activation_elements,
    fit_serving_model,
    kv_cache_bytes,
    prediction_error,
)

MIB = 2**20


def test_arch_from_the_packaged_minilm_config():
    from tightfit.assets import minilm_path

    arch = ArchInfo.from_dir(minilm_path())
    assert (arch.kind, arch.layers, arch.hidden, arch.heads, arch.ffn, arch.vocab) == (
        "classifier", 6, 384, 12, 1536, 30522,
    )
    assert arch.head_dim == 32


def test_kv_cache_follows_the_formula_for_smollm2_shape():
    arch = ArchInfo.default_for("causal_lm")
    # 2 (K, V) x 30 layers x 3 kv heads x 64 dims x 4 bytes = 46,080 bytes per token per sequence
    assert kv_cache_bytes(arch, sequences=1, tokens_per_sequence=1, dtype_bytes=4) == 46_080
    assert kv_cache_bytes(arch, sequences=8, tokens_per_sequence=160, dtype_bytes=2) == 46_080 // 2 * 8 * 160
    assert kv_cache_bytes(ArchInfo(), 8, 160, 4) == 0  # encoders keep no cache


def test_prediction_grows_with_batch_and_halves_activations_in_bf16():
    model = ServingMemoryModel()
    arch = ArchInfo()
    small = model.predict(90 * MIB, arch, batch=1, seq_len=64, load_rss_bytes=460 * MIB)
    big = model.predict(90 * MIB, arch, batch=32, seq_len=64, load_rss_bytes=460 * MIB)
    assert big.total > small.total
    assert big.activations == pytest.approx(32 * small.activations, rel=0.01)
    half = model.predict(45 * MIB, arch, batch=32, seq_len=64, dtype_bytes=activation_dtype_bytes("bf16"))
    assert half.activations == pytest.approx(big.activations / 2, rel=0.01)
    # the measured load RSS replaces the fallback formula; the replica overhead and the first forward on top
    assert small.total - small.activations == 460 * MIB + model.replica_overhead_bytes + model.first_forward_bytes
    with pytest.raises(ConfigError):
        model.predict(1, arch, batch=0, seq_len=64)


def test_activation_dtype_from_the_chain():
    assert activation_dtype_bytes("bf16") == 2
    assert activation_dtype_bytes("prune_structured:heads=0.5|int8_dynamic") == 4
    assert activation_dtype_bytes("int4_weight_only:group_size=32") == 2  # torchao computes in bf16
    assert activation_dtype_bytes("onnx_int4:block_size=32") == 4  # ONNX Runtime in fp32, its KV cache too


def test_a_variant_whose_profiled_forward_outgrew_the_model_is_booked_by_its_measurement():
    """torchao's dynamic int8 holds quantized copies of every activation: where the variant's own profile
    (load and serve peaks of one fresh process at batch 32) grew more than the calibrated terms book, the
    activations follow that growth and scale with the batch; where it grew less (fp32: the load peak hides
    the forward), the calibrated model stands."""
    model = ServingMemoryModel(activation_scale=0.25, first_forward_bytes=30 * MIB)
    arch = ArchInfo()
    at32 = activation_elements(arch, 32, 64) * 4
    heavy = MeasuredForward(load_rss_bytes=520 * MIB, serve_rss_bytes=520 * MIB + 134 * MIB, batch=32, seq_len=64)
    plain = model.predict(56 * MIB, arch, batch=40, seq_len=64, load_rss_bytes=520 * MIB)
    booked = model.predict(56 * MIB, arch, batch=40, seq_len=64, load_rss_bytes=520 * MIB, measured=heavy)
    per_element = (134 * MIB - 30 * MIB) / at32
    assert booked.activations == pytest.approx(per_element * activation_elements(arch, 40, 64) * 4, rel=1e-6)
    assert booked.total - plain.total == booked.activations - plain.activations > 60 * MIB
    at32_pred = model.predict(56 * MIB, arch, batch=32, seq_len=64, load_rss_bytes=520 * MIB, measured=heavy)
    assert at32_pred.total == pytest.approx(520 * MIB + model.replica_overhead_bytes + 134 * MIB, abs=2)  # its profile
    light = MeasuredForward(load_rss_bytes=555 * MIB, serve_rss_bytes=557 * MIB, batch=32, seq_len=64)
    assert model.predict(90 * MIB, arch, batch=40, seq_len=64, load_rss_bytes=555 * MIB, measured=light) == \
        model.predict(90 * MIB, arch, batch=40, seq_len=64, load_rss_bytes=555 * MIB)


def test_a_load_transient_is_booked_once_not_added_to_the_activations():
    """A variant rebuilt by quantizing a float skeleton peaks while loading (both copies) and settles lower:
    the replica's peak is the larger of loading and serving on the settled RSS, never their sum."""
    model = ServingMemoryModel(replica_overhead_bytes=60 * MIB, first_forward_bytes=30 * MIB, activation_scale=1.0,
                               load_overhead_bytes=50 * MIB)
    arch = ArchInfo()
    kwargs = {"seq_len": 64, "load_rss_bytes": 600 * MIB, "settled_rss_bytes": 515 * MIB}
    small = model.predict(56 * MIB, arch, batch=1, **kwargs)
    assert small.total == 50 * MIB + 600 * MIB  # loading's peak (with what the replica holds then): batch 1 is under it
    big = model.predict(56 * MIB, arch, batch=48, **kwargs)
    assert big.total == 60 * MIB + 515 * MIB + 30 * MIB + big.activations > small.total  # serving's peak
    assert big.weights == 56 * MIB
    summed = model.predict(56 * MIB, arch, batch=48, seq_len=64, load_rss_bytes=600 * MIB)
    assert summed.total - big.total == 85 * MIB  # without a settled figure: the load peak under the forward (as before)
    same = model.predict(56 * MIB, arch, batch=48, seq_len=64, load_rss_bytes=600 * MIB, settled_rss_bytes=700 * MIB)
    assert same == summed  # a settled RSS above the peak is a misreading: the peak stands for both


def test_fit_separates_the_load_transient_from_the_forward():
    """Replicas of variants with and without a load transient (their peak before any batch is loading's),
    each batch's peak read after resetting the replica's (as ``measure_replica`` does): the fit takes the
    overhead over the settled RSS and the forward's terms from the batches, and predicts every point's
    replica peak (loading's where batch 1 or 16 stays under it) within 1 %."""
    arch = ArchInfo()
    scale, overhead, first_forward, load_overhead = 1.2, 120 * MIB, 5 * MIB, 84 * MIB
    points = []
    for weights, settled, transient, dtype in ((90 * MIB, 430 * MIB, 75 * MIB, 4), (56 * MIB, 458 * MIB, 150 * MIB, 4),
                                               (45 * MIB, 530 * MIB, 0, 2)):
        idle, load = settled + overhead, settled + transient
        for batch in (1, 16, 48):
            serving = idle + first_forward + scale * activation_elements(arch, batch, 64) * dtype
            points.append(CalibrationPoint(weights, arch, dtype, batch, 64, int(serving), idle, load, 250 * MIB,
                                           settled_rss_bytes=settled, replica_load_peak_bytes=load + load_overhead))
    assert any(p.replica_peak_bytes > p.peak_rss_bytes for p in points)  # some peaks are loading's
    fitted = fit_serving_model(points)
    assert fitted.replica_overhead_bytes == pytest.approx(overhead, rel=0.01)
    assert fitted.load_overhead_bytes == pytest.approx(load_overhead, rel=0.01)
    assert fitted.activation_scale == pytest.approx(scale, rel=0.02)
    assert fitted.first_forward_bytes == pytest.approx(first_forward, rel=0.05)
    for p in points:
        predicted = fitted.predict(p.weight_bytes, arch, batch=p.batch, seq_len=64, dtype_bytes=p.dtype_bytes,
                                   load_rss_bytes=p.load_rss_bytes, settled_rss_bytes=p.settled_rss_bytes).total
        assert prediction_error(predicted, p.replica_peak_bytes) < 0.01, (p.weight_bytes >> 20, p.batch)


def test_measured_forward_comes_from_a_classifier_profile_only():
    from tightfit.footprint import Footprint
    from tightfit.memory.replica import measured_forward_of

    record = Footprint(variant="v", chain="int8_dynamic", kind="classifier", seq_len=64,
                       peak_rss_load_bytes=500 * MIB, peak_rss_serve_bytes=640 * MIB)
    assert measured_forward_of(record) == MeasuredForward(500 * MIB, 640 * MIB, 32, 64)
    record.extra = {"rss_now_load_bytes": 430 * MIB}  # settled alone (a profile from before the forward's peak)
    assert measured_forward_of(record).growth_bytes == 140 * MIB  # serve over load peak, as before
    record.extra.update(rss_now_warm_bytes=430 * MIB, rss_forward_peak_bytes=590 * MIB)  # warmed up, then the batch
    assert measured_forward_of(record).growth_bytes == 160 * MIB
    assert measured_forward_of(Footprint(variant="v", chain="fp32", kind="classifier", seq_len=64)) is None
    lm = Footprint(variant="lm", chain="int4_weight_only", kind="causal_lm", seq_len=64,
                   peak_rss_load_bytes=500 * MIB, peak_rss_serve_bytes=900 * MIB)
    assert measured_forward_of(lm) is None  # an LM's serve peak holds its KV cache, counted on its own


def test_fit_recovers_known_coefficients():
    """Points generated from known coefficients (a replica overhead, a first-forward constant that every
    batch pays, an activation slope) fit back to them: the intercept is not lost in a fit through the origin."""
    arch = ArchInfo()
    truth_scale, overhead, first_forward = 1.4, 120 * MIB, 30 * MIB
    points = []
    for weights, load, dtype in ((90 * MIB, 460 * MIB, 4), (45 * MIB, 560 * MIB, 2)):
        idle = load + overhead
        for batch in (1, 16, 48):
            acts = truth_scale * activation_elements(arch, batch, 64) * dtype
            points.append(CalibrationPoint(weights, arch, dtype, batch, 64, int(idle + first_forward + acts), idle,
                                           load, 250 * MIB))
    fitted = fit_serving_model(points)
    assert fitted.activation_scale == pytest.approx(truth_scale, rel=0.02)
    assert fitted.replica_overhead_bytes == pytest.approx(overhead, rel=0.01)
    assert fitted.first_forward_bytes == pytest.approx(first_forward, rel=0.02)
    for p in points:
        predicted = fitted.predict(p.weight_bytes, arch, batch=p.batch, seq_len=64, dtype_bytes=p.dtype_bytes,
                                   load_rss_bytes=p.load_rss_bytes).total
        assert prediction_error(predicted, p.peak_rss_bytes) < 0.01
    with pytest.raises(ConfigError):
        fit_serving_model([])


def test_model_round_trips_through_a_file(tmp_path):
    model = ServingMemoryModel(replica_overhead_bytes=7 * MIB, activation_scale=1.3, source="test")
    path = model.save(tmp_path / "cal.json")
    assert ServingMemoryModel.load(path) == model
    with pytest.raises(ConfigError, match="does not exist"):
        ServingMemoryModel.load(tmp_path / "missing.json")


def _fresh_process_point(variant_dir, batch: int, seq_len: int) -> CalibrationPoint:
    """Load a variant and serve one batch in a fresh process (``tightfit.measure.memory``): a plain process,
    so the replica overhead is zero, idle = the RSS once loading was over (trimmed) and one answer warmed it
    up, the peak is the batch's own (read after a reset) and loading's peak is the replica's load peak."""
    from tightfit.measure.memory import measure_memory
    from tightfit.memory.replica import footprint_for_source

    mem = measure_memory(variant_dir, seq_len=seq_len, batch=batch)
    record = footprint_for_source(str(variant_dir))
    return CalibrationPoint(
        weight_bytes=int(record.disk_bytes or 0), arch=ArchInfo.from_dir(variant_dir),
        dtype_bytes=activation_dtype_bytes(record.chain), batch=batch, seq_len=seq_len,
        peak_rss_bytes=int(mem["rss_forward_peak_bytes"]), idle_rss_bytes=int(mem["rss_now_warm_bytes"]),
        load_rss_bytes=int(mem["rss_load_bytes"]), process_base_bytes=int(mem["rss_imports_bytes"]),
        settled_rss_bytes=int(mem["rss_now_warm_bytes"]), replica_load_peak_bytes=int(mem["rss_load_bytes"]),
    )


@pytest.mark.slow
def test_a_held_out_variant_and_batch_are_predicted_within_15_percent(finetuned_minilm_dir, tmp_path, monkeypatch):
    """Fitted on fp32 at batches 8 and 64, the model predicts int8 (never seen) at 32 x 128 tokens (never
    seen) from int8's own profile (a fresh process at 32 x 64 tokens, as the profiler measures every
    variant), against another fresh process: within 15 %, and closer than the settled RSS alone (activations
    matter here: 128 tokens x 32 sequences are about a fifth of the peak). Without the profile's forward
    the model books fp32's activations for torchao's int8 and was 17 % under in about 1 run in 7."""
    from tightfit.compress import build_variant
    from tightfit.spec import VariantSpec

    monkeypatch.setenv("TIGHTFIT_THREADS", "1")
    seq_len = 128
    model = fit_serving_model([_fresh_process_point(finetuned_minilm_dir, b, seq_len) for b in (8, 64)])
    assert model.replica_overhead_bytes < 16 * MIB  # a plain process: nothing on top of its settled RSS
    int8 = build_variant(finetuned_minilm_dir, VariantSpec.parse("int8_dynamic", name="int8"), tmp_path / "int8",
                         progress=False)
    profile = _fresh_process_point(int8, 32, 64)
    measured = MeasuredForward(profile.load_rss_bytes, profile.replica_peak_bytes, batch=32, seq_len=64,
                               settled_rss_bytes=profile.settled_rss_bytes, forward_peak_bytes=profile.peak_rss_bytes)
    held = _fresh_process_point(int8, 32, seq_len)
    predicted = model.predict(held.weight_bytes, held.arch, batch=32, seq_len=seq_len, dtype_bytes=held.dtype_bytes,
                              load_rss_bytes=profile.load_rss_bytes, measured=measured,
                              settled_rss_bytes=profile.settled_rss_bytes).total
    peak = held.replica_peak_bytes  # the process's peak: loading's or the forward's
    error = prediction_error(predicted, peak)
    detail = (predicted >> 20, peak >> 20, profile.load_rss_bytes >> 20, profile.peak_rss_bytes >> 20)
    assert error <= 0.15, detail
    assert abs(predicted - peak) < abs(held.settled_rss_bytes - peak), detail
