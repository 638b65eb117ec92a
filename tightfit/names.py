"""Every MLflow metric, param and tag name tightfit writes, and the names of the run layout.

One place spells them, so a record logged by the profiler, the Ray Train callback or the serving plan,
read back by ``select``/``serve``/``compare``, and charted in the MLflow UI all agree.
Footprint metric names are the field names of ``tightfit.footprint.Footprint`` (``METRIC_FIELDS``).
"""

from __future__ import annotations

from typing import Final

from tightfit.errors import ConfigError
from tightfit.footprint import METRIC_FIELDS, NON_METRIC_FIELDS

# --------------------------------------------------------------------------------------------------
# Footprint metrics (one nested run per variant). Field name == metric name.
# --------------------------------------------------------------------------------------------------
COMPILED: Final = "compiled"
PARAMS_TOTAL: Final = "params_total"
PARAMS_NONZERO: Final = "params_nonzero"
DISK_BYTES: Final = "disk_bytes"
DISK_BYTES_COMPRESSED: Final = "disk_bytes_compressed"
PEAK_RSS_LOAD_BYTES: Final = "peak_rss_load_bytes"
PEAK_RSS_SERVE_BYTES: Final = "peak_rss_serve_bytes"
GPU_PEAK_BYTES: Final = "gpu_peak_bytes"
SEQ_LEN: Final = "seq_len"
LATENCY_MS_B1_P50: Final = "latency_ms_b1_p50"
LATENCY_MS_B1_P95: Final = "latency_ms_b1_p95"
LATENCY_MS_B1_P99: Final = "latency_ms_b1_p99"
LATENCY_MS_B32_P50: Final = "latency_ms_b32_p50"
LATENCY_MS_B32_P95: Final = "latency_ms_b32_p95"
LATENCY_MS_B32_P99: Final = "latency_ms_b32_p99"
THROUGHPUT_SPS: Final = "throughput_sps"
WEIGHT_BYTES_PER_FORWARD: Final = "weight_bytes_per_forward"
ACCURACY: Final = "accuracy"
F1_MACRO: Final = "f1_macro"
PERPLEXITY: Final = "perplexity"
COMPRESSION_RATIO: Final = "compression_ratio"
SPEEDUP_B32: Final = "speedup_b32"
ACCURACY_DROP: Final = "accuracy_drop"
# --- measurement spread (tightfit.measure.timing): spread across interleaved rounds, threads, load ---
LATENCY_MS_B1_CV: Final = "latency_ms_b1_cv"
LATENCY_MS_B32_CV: Final = "latency_ms_b32_cv"
MEASURE_ROUNDS: Final = "measure_rounds"
MEASURE_THREADS: Final = "measure_threads"
LOAD_AVG_1M: Final = "load_avg_1m"
MEASURE_CPU_SHARE: Final = "measure_cpu_share"
# --- end of the measurement spread block ---
# --- decoder LMs (issue 13) ---
WEIGHT_BYTES: Final = "weight_bytes"
TASK_ACCURACY: Final = "task_accuracy"
TTFT_MS: Final = "ttft_ms"
DECODE_TOK_S_B1: Final = "decode_tok_s_b1"
DECODE_TOK_S_B8: Final = "decode_tok_s_b8"
KV_CACHE_BYTES_PER_TOKEN: Final = "kv_cache_bytes_per_token"
INT4_WEIGHT_FRACTION: Final = "int4_weight_fraction"
LM_ONLY_METRICS: Final = frozenset({
    WEIGHT_BYTES, TASK_ACCURACY, TTFT_MS, DECODE_TOK_S_B1, DECODE_TOK_S_B8, KV_CACHE_BYTES_PER_TOKEN, INT4_WEIGHT_FRACTION,
})
"""Measured for decoder LMs only (``tightfit.measure.lm``): a classifier's run does not carry them."""

# Derived from a footprint, not a field of it: the smallest Ray Serve replica budget the serving planner
# accepts (``tightfit.memory.replica.replica_need_bytes``). Selection constrains and ranks memory by it.
SERVING_REPLICA_BYTES: Final = "serving_replica_bytes"

FOOTPRINT_METRICS: Final[tuple[str, ...]] = METRIC_FIELDS
"""Every footprint metric name, in the record's field order."""

FOOTPRINT_LABEL_FIELDS: Final[frozenset[str]] = NON_METRIC_FIELDS
"""Footprint fields that are not metrics (variant, chain, kind, status, ...): stored as tags/params."""


def latency_metric(batch: int, percentile: int = 95) -> str:
    """The latency metric name for a batch size and percentile (``latency_ms_b32_p95``)."""
    name = f"latency_ms_b{batch}_p{percentile}"
    if name not in METRIC_FIELDS:
        known = sorted({m.split("_")[2] for m in METRIC_FIELDS if m.startswith("latency_ms_b")})

        raise ConfigError(
            f"no latency is measured at batch {batch} / p{percentile}; measured batches: {', '.join(known)}, "
            "percentiles p50/p95/p99"
        )
    return name


# ---- lean runtime (issue 17): the runtime a variant runs on and what its deployed process costs ----
COLD_START_S: Final = "cold_start_s"
"""Seconds from the start of a fresh process to its first answer (imports, load, one batch)."""
RUNTIME: Final = "runtime"
"""The footprint field naming the runtime a variant runs on (a label, logged as the tag ``TAG_RUNTIME``)."""
RUNTIME_TORCH: Final = "torch"
RUNTIME_ONNXRUNTIME: Final = "onnxruntime"
RUNTIMES: Final[tuple[str, ...]] = (RUNTIME_TORCH, RUNTIME_ONNXRUNTIME)

# --------------------------------------------------------------------------------------------------
# Training metrics (one run per fine-tuning / distillation job, role=training).
# --------------------------------------------------------------------------------------------------
EPOCH: Final = "epoch"
TRAIN_LOSS: Final = "train_loss"
VAL_LOSS: Final = "val_loss"
VAL_ACCURACY: Final = "val_accuracy"
TEST_ACCURACY: Final = "test_accuracy"
SAMPLES_PER_S: Final = "samples_per_s"
WALL_S: Final = "wall_s"
MICRO_BATCH: Final = "micro_batch"
ACCUMULATION_STEPS: Final = "accumulation_steps"
GLOBAL_BATCH: Final = "global_batch"
WORKERS: Final = "workers"
PEAK_RSS_BYTES: Final = "peak_rss_bytes"
"""Peak RSS of one process; per worker as ``worker{rank}.peak_rss_bytes``, the maximum over workers plain."""
PREDICTED_PEAK_BYTES: Final = "predicted_peak_bytes"
MEMORY_PREDICTION_ERROR: Final = "memory_prediction_error"
TIME_TO_TARGET_S: Final = "time_to_target_s"
# --- early stopping (tightfit.train.stopping) ---
EPOCHS_RUN: Final = "epochs_run"
BEST_EPOCH: Final = "best_epoch"
"""The epoch whose weights the run delivers (best validation figure)."""
STOPPED_EARLY: Final = "stopped_early"

TRAINING_METRICS: Final[tuple[str, ...]] = (
    EPOCH,
    TRAIN_LOSS,
    VAL_LOSS,
    VAL_ACCURACY,
    TEST_ACCURACY,
    SAMPLES_PER_S,
    WALL_S,
    MICRO_BATCH,
    ACCUMULATION_STEPS,
    GLOBAL_BATCH,
    WORKERS,
    PEAK_RSS_BYTES,
    PREDICTED_PEAK_BYTES,
    MEMORY_PREDICTION_ERROR,
    TIME_TO_TARGET_S,
    EPOCHS_RUN,
    BEST_EPOCH,
    STOPPED_EARLY,
)


def worker_metric(rank: int, name: str) -> str:
    """A per-worker metric name: ``worker{rank}.{name}`` (e.g. ``worker1.peak_rss_bytes``)."""
    if rank < 0:
        raise ValueError(f"worker rank must be >= 0, got {rank}")
    return f"worker{rank}.{name}"


# --------------------------------------------------------------------------------------------------
# Serving metrics (the plan and a load run, logged on the variant's run or a role=serving run).
# --------------------------------------------------------------------------------------------------
SERVE_MEMORY_BUDGET_BYTES: Final = "serve.memory_budget_bytes"
SERVE_PREDICTED_PEAK_BYTES: Final = "serve.predicted_peak_bytes"
SERVE_MEASURED_PEAK_BYTES: Final = "serve.measured_peak_bytes"
SERVE_MAX_BATCH: Final = "serve.max_batch_size"
SERVE_MAX_TOKENS: Final = "serve.max_tokens_per_request"
SERVE_MAX_ONGOING: Final = "serve.max_ongoing_requests"
SERVE_MAX_QUEUED: Final = "serve.max_queued_requests"
SERVE_REPLICAS: Final = "serve.replicas"
SERVE_RPS: Final = "serve.requests_per_s"
SERVE_P50_MS: Final = "serve.latency_ms_p50"
SERVE_P99_MS: Final = "serve.latency_ms_p99"
SERVE_REJECTED: Final = "serve.rejected_requests"
SERVE_OOM_KILLS: Final = "serve.oom_kills"
SERVE_MAX_RSS_OVER_BUDGET: Final = "serve.max_rss_over_budget"

SERVING_METRICS: Final[tuple[str, ...]] = (
    SERVE_MEMORY_BUDGET_BYTES,
    SERVE_PREDICTED_PEAK_BYTES,
    SERVE_MEASURED_PEAK_BYTES,
    SERVE_MAX_BATCH,
    SERVE_MAX_TOKENS,
    SERVE_MAX_ONGOING,
    SERVE_MAX_QUEUED,
    SERVE_REPLICAS,
    SERVE_RPS,
    SERVE_P50_MS,
    SERVE_P99_MS,
    SERVE_REJECTED,
    SERVE_OOM_KILLS,
    SERVE_MAX_RSS_OVER_BUDGET,
)

# --------------------------------------------------------------------------------------------------
# Parent run metrics (one per pipeline run).
# --------------------------------------------------------------------------------------------------
VARIANTS_TOTAL: Final = "variants_total"
VARIANTS_FAILED: Final = "variants_failed"
VARIANTS_ON_FRONT: Final = "variants_on_front"
PARENT_METRICS: Final[tuple[str, ...]] = (VARIANTS_TOTAL, VARIANTS_FAILED, VARIANTS_ON_FRONT)

# --------------------------------------------------------------------------------------------------
# Params. A variant's params are ``VariantSpec.to_params()`` (variant, chain, n_steps, step{i}.*).
# --------------------------------------------------------------------------------------------------
PARAM_VARIANT: Final = "variant"
PARAM_CHAIN: Final = "chain"
PARAM_N_STEPS: Final = "n_steps"
PARAM_KIND: Final = "kind"
PARAM_DEVICE: Final = "device"
PARAM_BASE_MODEL: Final = "base_model"
PARAM_DATASET: Final = "dataset"
PARAM_SEED: Final = "seed"
PARAM_EPOCHS: Final = "epochs"
PARAM_LR: Final = "lr"
PARAM_MAX_LENGTH: Final = "max_length"
PARAM_MEMORY_BUDGET: Final = "memory_budget_bytes"
PARAM_TEACHER: Final = "teacher"
PARAM_TARGET: Final = "target"
"""On the parent run: ``HardwareTarget.describe()`` of the selection."""


def step_param(index: int, key: str) -> str:
    """The param name of one step field (``step0.method``, ``step0.sparsity``), as ``VariantSpec.to_params``."""
    return f"step{index}.{key}"


# --------------------------------------------------------------------------------------------------
# Tags.
# --------------------------------------------------------------------------------------------------
TAG_ROLE: Final = "tightfit.role"
TAG_METHOD: Final = "tightfit.method"
"""Comma-joined methods of the chain (``prune_structured,distill,int8_dynamic``; ``fp32`` for none)."""
TAG_BASE_MODEL: Final = "tightfit.base_model"
TAG_DATASET: Final = "tightfit.dataset"
TAG_VERSION: Final = "tightfit.version"
TAG_GIT_SHA: Final = "tightfit.git_sha"
TAG_KIND: Final = "tightfit.kind"
TAG_BACKEND: Final = "tightfit.backend"
TAG_DEVICE: Final = "tightfit.device"
TAG_STATUS: Final = "tightfit.status"
TAG_ERROR: Final = "tightfit.error"
TAG_VARIANT: Final = "tightfit.compress.variant"
TAG_CHAIN: Final = "tightfit.chain"
TAG_RECORD_ID: Final = "tightfit.record_id"
"""A stable id per logged record, so a resync after an outage never duplicates a run."""
TAG_PIPELINE_RUN: Final = "tightfit.pipeline_run"
"""The pipeline run id shared by a parent run and its nested variant runs."""
TAG_PARETO: Final = "tightfit.pareto"
"""``true`` on variant runs that lie on the Pareto front of their parent run."""
TAG_SELECTED: Final = "tightfit.selected"
TAG_VARIANT_DIR: Final = "tightfit.variant_dir"
TAG_RUNTIME: Final = "tightfit.runtime"
"""The runtime a variant runs on (``torch`` or ``onnxruntime``): selection compares runtimes side by side."""
TAG_NOISE: Final = "tightfit.measure.noise"
"""``Footprint.noise``: the latency figures whose spread stayed above the threshold ("" when none)."""
TAG_FOOTPRINT_EXTRA: Final = "tightfit.footprint_extra"
"""``Footprint.extra`` as JSON (the record's free-form figures), so a record reads back whole."""

ROLE_PARENT: Final = "parent"
ROLE_VARIANT: Final = "variant"
ROLE_TRAINING: Final = "training"
ROLE_SERVING: Final = "serving"
ROLES: Final[tuple[str, ...]] = (ROLE_PARENT, ROLE_VARIANT, ROLE_TRAINING, ROLE_SERVING)

STATUS_OK: Final = "ok"
STATUS_FAILED: Final = "failed"

MLFLOW_PARENT_RUN_ID_TAG: Final = "mlflow.parentRunId"
MLFLOW_RUN_NAME_TAG: Final = "mlflow.runName"

# --------------------------------------------------------------------------------------------------
# Run layout: experiment, artifacts, registry.
# --------------------------------------------------------------------------------------------------
DEFAULT_EXPERIMENT: Final = "tightfit"
DEFAULT_REGISTERED_MODEL: Final = "tightfit-classifier"
OUTBOX_FILE: Final = "mlflow-outbox.jsonl"
DEAD_LETTER_FILE: Final = "mlflow-dead-letters.jsonl"
"""Beside the outbox: every operation MLflow refused (or that could not be applied), with the reason."""

ARTIFACT_FOOTPRINT_TABLE: Final = "footprints.json"
"""``mlflow.log_table`` file on the parent run: one row per variant, columns = footprint fields."""
ARTIFACT_PARETO_PLOT: Final = "pareto.png"
ARTIFACT_SELECTION: Final = "selection.json"
# --- issue 15 (what a person sees): the selection report, MLflow 3 LoggedModels -----------------------
ARTIFACT_REPORT: Final = "report.html"
"""The HTML selection report (``tightfit.select.write_report``), the same page the pipeline writes."""
TAG_MODEL_ID: Final = "tightfit.model_id"
"""On a variant run: the id of its MLflow LoggedModel (``models:/<id>``)."""
LOGGED_MODEL_TYPE: Final = "tightfit-variant"
"""The ``model_type`` of every variant's LoggedModel."""
MLFLOW_EXPERIMENT_KIND_TAG: Final = "mlflow.experimentKind"
EXPERIMENT_KIND_MODEL_TRAINING: Final = "custom_model_development"
"""Set on tightfit's experiments so the MLflow 3 UI opens them in its model-training view (runs, Models tab
with metric columns) rather than the GenAI one."""
ARTIFACT_MODEL: Final = "model"
"""The pyfunc model's artifact path on a variant run (the variant dir lives inside it)."""
PYFUNC_VARIANT_ARTIFACT: Final = "variant_dir"
"""The key of the variant directory in the pyfunc model's ``artifacts``."""

ALIAS_CHAMPION: Final = "champion"
BUDGET_TIERS_BYTES: Final[tuple[int, ...]] = (
    128 * 2**20,
    256 * 2**20,
    512 * 2**20,
    1 * 2**30,
    2 * 2**30,
    4 * 2**30,
    8 * 2**30,
    16 * 2**30,
)
"""Memory budget tiers: each gets a registry alias naming the best variant that fits it."""


def budget_alias(tier_bytes: int) -> str:
    """The registry alias of a memory budget tier: ``fits-512mib``, ``fits-1gib``."""
    if tier_bytes <= 0:
        raise ValueError(f"budget tier must be positive, got {tier_bytes}")
    if tier_bytes % 2**30 == 0:
        return f"fits-{tier_bytes // 2**30}gib"
    if tier_bytes % 2**20 == 0:
        return f"fits-{tier_bytes // 2**20}mib"
    return f"fits-{tier_bytes}b"


def tier_for_budget(budget_bytes: int) -> int | None:
    """The largest tier not above a budget (a 600 MiB budget can load ``fits-512mib``); None below all tiers."""
    fitting = [t for t in BUDGET_TIERS_BYTES if t <= budget_bytes]
    return max(fitting) if fitting else None


def alias_for_budget(budget_bytes: int) -> str | None:
    """The alias serving loads for a memory budget, or None when the budget is below every tier."""
    tier = tier_for_budget(budget_bytes)
    return budget_alias(tier) if tier is not None else None


def model_uri(name: str = DEFAULT_REGISTERED_MODEL, alias: str = ALIAS_CHAMPION) -> str:
    """``models:/name@alias``."""
    return f"models:/{name}@{alias}"
