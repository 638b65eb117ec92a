"""The training memory model and memory-aware batching (no Ray needed; a budget miss fails before Ray starts)."""

from __future__ import annotations

import pytest

from tightfit.errors import BudgetError
from tightfit.memory.training import (
    ModelShape,
    choose_micro_batch,
    estimate_training_memory,
    fit_calibration,
)

MINILM_LIKE = ModelShape(params=22_713_986, hidden=384, layers=6, heads=12, vocab=30522, num_labels=2)


def test_state_bytes_follow_adamw_and_activations_grow_with_batch() -> None:
    one = estimate_training_memory(MINILM_LIKE, micro_batch=1, seq_len=64)
    eight = estimate_training_memory(MINILM_LIKE, micro_batch=8, seq_len=64)
    assert one.weights == one.grads == MINILM_LIKE.params * 4
    assert one.optimizer == 2 * one.weights  # AdamW: two fp32 moments
    assert eight.activations == pytest.approx(8 * one.activations, rel=0.01)
    assert eight.total - one.total == eight.activations - one.activations
    longer = estimate_training_memory(MINILM_LIKE, micro_batch=8, seq_len=128)
    assert longer.activations > 2 * eight.activations  # attention scores grow with seq_len^2


def test_checkpointing_fsdp_and_bf16_shrink_what_they_should() -> None:
    base = estimate_training_memory(MINILM_LIKE, micro_batch=16, seq_len=64, workers=4)
    ckpt = estimate_training_memory(MINILM_LIKE, micro_batch=16, seq_len=64, workers=4, gradient_checkpointing=True)
    fsdp = estimate_training_memory(MINILM_LIKE, micro_batch=16, seq_len=64, workers=4, strategy="fsdp")
    assert ckpt.activations < base.activations / 2
    assert fsdp.optimizer == pytest.approx(base.optimizer / 4, rel=0.01)
    assert fsdp.weights < base.weights and fsdp.ddp_buckets == 0 < base.ddp_buckets


def test_choose_micro_batch_fits_budget_and_reaches_global_batch() -> None:
    state = estimate_training_memory(MINILM_LIKE, micro_batch=1, seq_len=64).total
    per_sample = estimate_training_memory(MINILM_LIKE, micro_batch=2, seq_len=64).total - state
    for budget_extra, workers in ((3, 1), (10, 2), (1000, 2)):
        budget = state + budget_extra * per_sample
        micro, accumulation = choose_micro_batch(budget, 64, MINILM_LIKE, seq_len=64, workers=workers)
        assert estimate_training_memory(MINILM_LIKE, micro_batch=micro, seq_len=64, workers=workers).total <= budget
        assert micro * accumulation * workers >= 64
        assert micro * (accumulation - 1) * workers < 64  # no needless extra accumulation step
    small, _ = choose_micro_batch(state + 3 * per_sample, 64, MINILM_LIKE, seq_len=64)
    large, acc = choose_micro_batch(state + 1000 * per_sample, 64, MINILM_LIKE, seq_len=64)
    assert small < large == 64 and acc == 1


def test_budget_below_batch_one_is_a_clear_error() -> None:
    with pytest.raises(BudgetError, match=r"cannot hold even micro-batch 1.*raise the budget"):
        choose_micro_batch(200 * 2**20, 32, MINILM_LIKE, seq_len=64)


def test_fit_calibration_recovers_slope_and_overhead() -> None:
    truth = fit_calibration(MINILM_LIKE, {4: 10**9, 16: 10**9}, seq_len=64)
    assert truth.activation_scale == 0.0
    from tightfit.memory.training import Calibration

    known = Calibration(activation_scale=1.7, runtime_overhead_bytes=600 * 2**20, note="")
    measured = {
        b: estimate_training_memory(MINILM_LIKE, micro_batch=b, seq_len=64, calibration=known).total for b in (4, 16)
    }
    fitted = fit_calibration(MINILM_LIKE, measured, seq_len=64)
    assert fitted.activation_scale == pytest.approx(1.7, rel=0.01)
    assert fitted.runtime_overhead_bytes == pytest.approx(600 * 2**20, rel=0.01)


def test_shape_of_real_minilm_read_without_weights() -> None:
    from tightfit.assets import minilm_path

    shape = ModelShape.from_pretrained_dir(minilm_path(), num_labels=2)
    assert shape.params == 22_713_986
    assert (shape.hidden, shape.layers, shape.heads) == (384, 6, 12)


def test_finetune_budget_error_before_ray_starts(tmp_path) -> None:
    import ray

    from tightfit.train import FinetuneConfig, run_finetune

    config = FinetuneConfig(workers=2, memory_budget="256MiB", limit=32, out_dir=str(tmp_path / "out"),
                            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(BudgetError, match=r"256\.0 MiB"):
        run_finetune(config)
    assert not ray.is_initialized()
    assert not (tmp_path / "out").exists()


def test_fsdp_on_cpu_is_a_clear_error() -> None:
    from tightfit.errors import UnsupportedError
    from tightfit.train import FinetuneConfig

    with pytest.raises(UnsupportedError, match="fsdp needs GPU"):
        FinetuneConfig(strategy="fsdp")
    with pytest.raises(UnsupportedError, match="fsdp needs GPU"):
        FinetuneConfig.from_dict({"strategy": "fsdp"})
    assert FinetuneConfig(strategy="fsdp", use_gpu=True).strategy == "fsdp"
