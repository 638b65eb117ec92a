"""Distributed fine-tuning and distillation on Ray Train V2: ``FinetuneConfig`` -> ``run_finetune`` -> result.

One library call behind every front door (CLI, the Ray job entrypoint, the Jobs API, a KubeRay RayJob):
data reaches the workers in memory or through Ray Data (``tightfit.train.ingest``); the micro-batch comes from
the training memory model and a per-worker budget; checkpoints are written every epoch and a failed worker
restarts the group from the last one; every rank's figures go to MLflow through a driver-side ``UserCallback``;
the final model is an HF-format directory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tightfit import names, settings
from tightfit.assets import resolve_model_path
from tightfit.data import DatasetSplits, load_dataset
from tightfit.errors import BackendError, ConfigError
from tightfit.memory.training import ModelShape, choose_micro_batch, estimate_training_memory
from tightfit.progress import Reporter
from tightfit.train.config import FinetuneConfig
from tightfit.train.ingest import choose_ingest, put_split, ray_dataset
from tightfit.train.loop import MODEL_SUBDIR, train_loop_per_worker
from tightfit.train.support import (
    evaluate_classifier,
    make_mlflow_callback,
    unique_run_name,
)
from tightfit.train.watch import watch_epochs
from tightfit.units import format_bytes, parse_bytes


@dataclass
class FinetuneResult:
    """Where the model went and what the run measured."""

    model_dir: Path
    metrics: dict[str, Any]
    run_id: str
    run_name: str
    checkpoint_path: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainingPlan:
    """The numbers fixed before any worker starts (all logged)."""

    micro_batch: int
    accumulation_steps: int
    predicted_peak_bytes: int
    precision: str
    memory_breakdown: str
    ingest: str


def resolve_precision(choice: str, use_gpu: bool) -> str:
    """``auto``: bf16 autocast on a GPU that supports it or a CPU with native bf16 (avx512_bf16/AMX), else fp32."""
    if choice != "auto":
        return choice
    import torch

    if use_gpu:
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def plan_training(config: FinetuneConfig, model_dir: str | Path, data: DatasetSplits) -> TrainingPlan:
    """Micro-batch and accumulation from the memory model (BudgetError before any worker starts), and how
    the train and validation splits reach the workers."""

    precision = resolve_precision(config.precision, config.use_gpu)
    shape = ModelShape.from_pretrained_dir(model_dir, num_labels=data.num_labels)
    options: dict[str, Any] = {
        "precision": precision, "strategy": config.strategy, "gradient_checkpointing": config.gradient_checkpointing,
    }
    per_worker = math.ceil(config.global_batch / config.workers)
    if config.memory_budget is not None:
        budget = parse_bytes(config.memory_budget, field="memory_budget")
        micro, accumulation = choose_micro_batch(
            budget, config.global_batch, shape, seq_len=config.max_length, workers=config.workers, **options
        )
        if config.micro_batch is not None and config.micro_batch < micro:
            micro = config.micro_batch
            accumulation = math.ceil(per_worker / micro)
    else:
        micro = min(config.micro_batch or per_worker, per_worker)
        accumulation = math.ceil(per_worker / micro)
    estimate = estimate_training_memory(
        shape, micro_batch=micro, seq_len=config.max_length, workers=config.workers, **options
    )
    ingest = choose_ingest(config.ingest, len(data.train) + len(data.validation), config.max_length)
    return TrainingPlan(micro, accumulation, estimate.total, precision, estimate.describe(), ingest)


@dataclass(frozen=True)
class RunPaths:
    """Where one run writes: its name, output dir, Ray Train storage and the tracking store."""

    run_name: str
    out_dir: Path
    storage: str
    tracking_uri: str


def run_paths(config: FinetuneConfig, distilling: bool) -> RunPaths:
    """A fresh run name (Ray silently no-ops a finished run of the same name) and its directories."""
    run_name = config.run_name or unique_run_name("distill" if distilling else "finetune")
    out_dir = Path(config.out_dir).expanduser().resolve() if config.out_dir else settings.home_dir() / "finetune" / run_name
    storage = config.storage_path or str(out_dir / "ray_results")
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    return RunPaths(run_name, out_dir, storage, settings.resolve_tracking_uri(config.tracking_uri))


def open_training_run(client: Any, config: FinetuneConfig, plan: TrainingPlan, paths: RunPaths) -> str:
    """The MLflow run of this fine-tune (role ``training``) with every setting as a param; its run id."""
    experiment = client.get_experiment_by_name(config.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.experiment)
    run = client.create_run(experiment_id, run_name=paths.run_name, tags={
        names.TAG_ROLE: names.ROLE_TRAINING, names.TAG_BASE_MODEL: config.model, names.TAG_DATASET: config.dataset,
    })
    params = {
        names.PARAM_BASE_MODEL: config.model, names.PARAM_DATASET: config.dataset, names.PARAM_SEED: config.seed,
        names.PARAM_EPOCHS: config.epochs, names.PARAM_LR: config.lr, names.PARAM_MAX_LENGTH: config.max_length,
        names.PARAM_TEACHER: config.teacher_dir or "", names.PARAM_MEMORY_BUDGET: config.memory_budget or "",
        names.WORKERS: config.workers, names.GLOBAL_BATCH: config.global_batch, names.MICRO_BATCH: plan.micro_batch,
        names.ACCUMULATION_STEPS: plan.accumulation_steps, "precision": plan.precision, "strategy": config.strategy,
        "ingest": plan.ingest,
        "gradient_checkpointing": config.gradient_checkpointing, "memory_breakdown": plan.memory_breakdown[:500],
    }
    for key, value in params.items():
        client.log_param(run.info.run_id, key, str(value))
    return str(run.info.run_id)


def ensure_ray(config: FinetuneConfig, plan: TrainingPlan) -> bool:
    """Join the given cluster, the job's cluster (``$RAY_ADDRESS``), or start a local Ray on 127.0.0.1.
    Returns True when this call started Ray (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if config.address:
        ray.init(address=config.address)
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init()  # inside a Ray job: the cluster the job runs on
        return False
    data_tasks = 1 if plan.ingest == "ray_data" else 0  # a CPU for Ray Data's tasks
    cpus = config.num_cpus or config.workers * config.cpus_per_worker + data_tasks
    settings.start_local_ray(num_cpus=cpus, log_to_driver=False)
    return True


def build_trainer(
    config: FinetuneConfig, plan: TrainingPlan, data: DatasetSplits, model_path: Path, teacher_path: str | None,
    paths: RunPaths, run_id: str,
) -> Any:
    """The ``TorchTrainer``: the worker loop's settings, the splits (in memory or Ray Datasets), checkpoints,
    restarts, MLflow."""
    import ray.train
    from ray.train.torch import TorchTrainer

    loop_config = {
        "model_dir": str(model_path), "teacher_dir": teacher_path, "num_labels": data.num_labels,
        "label_names": list(data.label_names),
        "cpus_per_worker": config.cpus_per_worker, "epochs": config.epochs, "lr": config.lr,
        "weight_decay": config.weight_decay, "warmup_ratio": config.warmup_ratio, "seed": config.seed,
        "micro_batch": plan.micro_batch, "accumulation_steps": plan.accumulation_steps,
        "rows_per_worker": math.ceil(len(data.train) / config.workers), "precision": plan.precision,
        "strategy": config.strategy, "gradient_checkpointing": config.gradient_checkpointing,
        "temperature": config.temperature, "alpha": config.alpha, "predicted_peak_bytes": plan.predicted_peak_bytes,
        "patience": config.patience, "monitor": config.monitor, "min_delta": config.min_delta,
        "ingest": plan.ingest,
    }
    ingest: dict[str, Any] = {}
    if plan.ingest == "memory":
        loop_config["train_ref"] = put_split(data.train, str(model_path), config.max_length)
        loop_config["validation_ref"] = put_split(data.validation, str(model_path), config.max_length)
    else:
        from ray.data import DataContext, ExecutionOptions

        DataContext.get_current().execution_options.preserve_order = True
        ingest["datasets"] = {"train": ray_dataset(data.train, str(model_path), config.max_length),
                              "validation": ray_dataset(data.validation, str(model_path), config.max_length)}
        ingest["dataset_config"] = ray.train.DataConfig(execution_options=ExecutionOptions(preserve_order=True))
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers, use_gpu=config.use_gpu, resources_per_worker={"CPU": config.cpus_per_worker},
        ),
        **ingest,
        run_config=ray.train.RunConfig(
            name=paths.run_name,
            storage_path=paths.storage,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[make_mlflow_callback(paths.tracking_uri, run_id, config.target_accuracy)],
        ),
    )


def collect_result(
    result: Any, config: FinetuneConfig, plan: TrainingPlan, data: DatasetSplits, paths: RunPaths, client: Any,
    run_id: str,
) -> FinetuneResult:
    """Copy the final model out of the last checkpoint, evaluate it on the test split, log what is left."""
    if result.checkpoint is None:
        raise BackendError(f"Ray Train run {paths.run_name!r} finished without a checkpoint "
                           f"(see {paths.storage}/{paths.run_name})")
    model_dir = paths.out_dir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    with result.checkpoint.as_directory() as ckpt:
        shutil.copytree(Path(ckpt) / MODEL_SUBDIR, model_dir)
    metrics = dict(result.metrics or {})
    metrics.update({"micro_batch": plan.micro_batch, "accumulation_steps": plan.accumulation_steps,
                    "workers": config.workers, "precision": plan.precision})
    if config.evaluate_test:
        test = evaluate_classifier(model_dir, data.test, max_length=config.max_length)
        metrics[names.TEST_ACCURACY] = test["accuracy"]
        metrics["test_f1_macro"] = test["f1_macro"]
        client.log_metric(run_id, names.TEST_ACCURACY, test["accuracy"])
    history = validation_curve(client, run_id)
    metrics[names.EPOCHS_RUN] = int(metrics.get(names.EPOCH) or len(history))
    delivered = next((row for row in history if row["epoch"] == metrics.get(names.BEST_EPOCH)), None)
    if delivered is not None:  # the figures describe the model delivered (the best epoch), the last in last_*
        for key in (names.VAL_LOSS, names.VAL_ACCURACY):
            metrics[f"last_{key}"] = metrics.get(key)
            metrics[key] = delivered.get(key, metrics.get(key))
    client.log_metric(run_id, names.EPOCHS_RUN, metrics[names.EPOCHS_RUN])
    reached = client.get_metric_history(run_id, names.TIME_TO_TARGET_S)
    if reached:
        metrics[names.TIME_TO_TARGET_S] = reached[0].value
    if config.log_model:
        client.log_artifacts(run_id, str(model_dir), names.ARTIFACT_MODEL)
    (paths.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    return FinetuneResult(
        model_dir=model_dir, metrics=metrics, run_id=run_id, run_name=paths.run_name,
        checkpoint_path=result.checkpoint.path, history=history,
    )


def validation_curve(client: Any, run_id: str) -> list[dict[str, Any]]:
    """One row per epoch run: validation loss and accuracy (what early stopping decided on), from MLflow."""
    rows: dict[int, dict[str, Any]] = {}
    for key in (names.VAL_LOSS, names.VAL_ACCURACY):
        for m in client.get_metric_history(run_id, key):
            rows.setdefault(int(m.step), {"epoch": int(m.step)})[key] = m.value
    return [rows[e] for e in sorted(rows)]


def run_finetune(config: FinetuneConfig, progress: Reporter | None = None) -> FinetuneResult:
    """Fine-tune (or distill) on Ray Train V2; log to MLflow; save the HF-format model; evaluate on test.

    Everything that can be refused is refused before Ray starts: the model path, the data, the memory plan.
    ``progress`` follows it: the plan, Ray starting, each epoch (samples/s, validation accuracy), the test.
    """
    import ray
    from mlflow import MlflowClient

    model_path, _ = resolve_model_path(config.model)
    if model_path.is_file():
        raise ConfigError(f"fine-tuning needs an HF-format model directory; {model_path} is a single file")
    teacher_path = str(resolve_model_path(config.teacher_dir)[0]) if config.teacher_dir else None
    data = load_dataset(config.dataset, seed=config.seed, limit=config.limit)
    plan = plan_training(config, model_path, data)
    paths = run_paths(config, distilling=teacher_path is not None)
    client = MlflowClient(paths.tracking_uri)
    run_id = open_training_run(client, config, plan, paths)
    reporter = progress or Reporter()
    reporter.note(f"plan: {config.workers} worker(s), micro-batch {plan.micro_batch} x {plan.accumulation_steps} "
                  f"accumulation, {plan.precision}, predicted peak {format_bytes(plan.predicted_peak_bytes)} per worker")
    with reporter.step("ray", "start Ray"):
        started_ray = ensure_ray(config, plan)
    status = "FAILED"
    try:
        trainer = build_trainer(config, plan, data, model_path, teacher_path, paths, run_id)
        try:
            with reporter.step("train", f"train ({len(data.train)} rows)", total=config.epochs, unit="epochs"), \
                    watch_epochs(client, run_id, config.epochs, reporter):
                result = trainer.fit()
        except Exception as exc:  # Ray wraps worker errors; report them as one clear line
            raise BackendError(
                f"Ray Train run {paths.run_name!r} failed after {config.max_failures} restart(s): {exc}; "
                f"logs and checkpoints are under {paths.storage}/{paths.run_name}"
            ) from exc
        with reporter.step("result", "evaluate and save"):
            outcome = collect_result(result, config, plan, data, paths, client, run_id)
        status = "FINISHED"
        return outcome
    finally:
        client.set_terminated(run_id, status=status)
        if started_ray:
            ray.shutdown()
