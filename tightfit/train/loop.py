"""The Ray Train worker loop: DDP/FSDP fine-tuning or distillation of a sequence classifier.

Runs inside every Ray Train worker (``train_loop_per_worker``). Deterministic for a seed: the head is
initialised from the seed, dropout is reseeded per (epoch, rank) and each epoch's shuffle is seeded
(``tightfit.train.ingest``), so a run resumed from an epoch checkpoint reproduces an unbroken run. Every rank
reports its own figures (samples/s, peak memory) each epoch.
Training stops early once validation stops improving (``tightfit.train.stopping``); the model each
checkpoint delivers is the best epoch's.
"""

from __future__ import annotations

import math
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from tightfit.compress.distill import distillation_loss
from tightfit.memory.rss import peak_rss_bytes
from tightfit.train.ingest import worker_shards
from tightfit.train.stopping import EarlyStopping

TRAIN_STATE_FILE = "train_state.pt"
MODEL_SUBDIR = "model"


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


def _full_state_dict(model: Any, strategy: str) -> dict[str, Any]:
    """A full (unsharded) CPU state dict, also for FSDP (gathered on every rank)."""
    if strategy == "fsdp":
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=True)):
            return dict(model.state_dict())
    return {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}


def _lr_lambda(total_steps: int, warmup_steps: int) -> Any:
    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(warmup_steps, 1)
        return max(0.0, (total_steps - step) / max(total_steps - warmup_steps, 1))

    return schedule


def _trimmed(batch: dict[str, Any]) -> tuple[Any, Any]:
    """Ids and mask cut to the batch's longest sequence: rows are padded to ``max_length`` at ingest, and the
    trailing pad columns change no real token's output (they are masked out) but cost compute."""
    mask = batch["attention_mask"]
    longest = max(1, int(mask.sum(dim=1).max()))
    return batch["input_ids"][:, :longest], mask[:, :longest]


def _autocast(precision: str, device: Any) -> Any:
    import torch

    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def _head(cfg: dict[str, Any]) -> dict[str, Any]:
    """The classifier head's size and label names (the dataset's), so the saved model serves them."""
    from tightfit.assets import label_maps

    names = cfg.get("label_names") or [str(i) for i in range(int(cfg["num_labels"]))]
    return label_maps(names)


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """One worker's training: load, (resume), train epochs with accumulation, validate, checkpoint, report."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForSequenceClassification
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(int(cfg["cpus_per_worker"]))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    strategy, precision = cfg["strategy"], cfg["precision"]
    micro_batch, accumulation = int(cfg["micro_batch"]), int(cfg["accumulation_steps"])

    torch.manual_seed(int(cfg["seed"]))  # the same fresh head on every rank
    model = AutoModelForSequenceClassification.from_pretrained(cfg["model_dir"], **_head(cfg))
    if cfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable()
    teacher = None
    if cfg.get("teacher_dir"):
        teacher = AutoModelForSequenceClassification.from_pretrained(
            cfg["teacher_dir"], num_labels=int(cfg["num_labels"])
        )
        teacher.eval().requires_grad_(False).to(device)

    state: dict[str, Any] | None = None
    stopper = EarlyStopping(str(cfg.get("monitor", "val_loss")), int(cfg.get("patience", 0)),
                            float(cfg.get("min_delta", 0.0)))
    best_state: dict[str, Any] | None = None  # rank 0: the best epoch's weights (the deliverable)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = torch.load(Path(ckpt_dir) / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
            if state.get("early_stopping"):
                stopper = EarlyStopping.from_state(state["early_stopping"])
            if rank == 0 and stopper.patience > 0:
                best_state = _read_delivered(Path(ckpt_dir) / MODEL_SUBDIR, cfg)
        model.load_state_dict(state["model"])

    if world > 1 or strategy == "fsdp":
        kwargs: dict[str, Any] = {} if strategy == "fsdp" else {"broadcast_buffers": False}
        model = ray.train.torch.prepare_model(model, parallel_strategy=strategy, parallel_strategy_kwargs=kwargs)
    else:
        model = model.to(device)

    steps_per_epoch = max(1, math.ceil(int(cfg["rows_per_worker"]) / (micro_batch * accumulation)))
    total_steps = steps_per_epoch * int(cfg["epochs"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, int(total_steps * float(cfg["warmup_ratio"])))
    )
    start_epoch, elapsed_before = 0, 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, elapsed_before = int(state["epoch"]) + 1, float(state["elapsed_s"])

    train_shard, val_shard = worker_shards(cfg, rank, world)
    run_start = time.perf_counter()
    for epoch in range(start_epoch, int(cfg["epochs"])):
        if stopper.should_stop:  # resumed after the stopping epoch's checkpoint: nothing left to train
            break
        torch.manual_seed(int(cfg["seed"]) * 1000 + epoch * 10 + rank)  # dropout masks per (epoch, rank)
        model.train()
        epoch_start = time.perf_counter()
        seen, loss_sum, batches, micro_step = 0, 0.0, 0, 0
        for batch in train_shard.iter_train(micro_batch, epoch, device):
            micro_step += 1
            last_of_group = micro_step % accumulation == 0
            sync = nullcontext() if last_of_group or world == 1 or strategy == "fsdp" else model.no_sync()
            with sync, _autocast(precision, device):
                ids, mask = _trimmed(batch)
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(input_ids=ids, attention_mask=mask).logits.float()
                    loss = distillation_loss(
                        logits, teacher_logits, batch["labels"], float(cfg["temperature"]), float(cfg["alpha"])
                    )
                else:
                    loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
                (loss / accumulation).backward()
            if last_of_group:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            seen += len(batch["labels"])
            loss_sum += float(loss.detach())
            batches += 1
        if micro_step % accumulation:  # a last, partial accumulation group
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        train_wall = time.perf_counter() - epoch_start

        val = _validate(model, val_shard, micro_batch, precision, device)
        if world > 1:
            totals = torch.tensor([val["loss_sum"], val["correct"], val["count"]], dtype=torch.float64)
            dist.all_reduce(totals)
            val = {"loss_sum": float(totals[0]), "correct": float(totals[1]), "count": float(totals[2])}
        elapsed = elapsed_before + time.perf_counter() - run_start
        metrics = {
            "rank": rank,
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(batches, 1),
            "val_loss": val["loss_sum"] / max(val["count"], 1),
            "val_accuracy": val["correct"] / max(val["count"], 1),
            "samples_per_s": seen / max(train_wall, 1e-9),
            "samples": seen,
            "wall_s": train_wall,
            "elapsed_s": elapsed,
            "peak_rss_bytes": peak_rss_bytes(),
            "gpu_peak_bytes": int(torch.cuda.max_memory_allocated()) if device.type == "cuda" else 0,
            "micro_batch": micro_batch,
            "accumulation_steps": accumulation,
            "workers": world,
            "predicted_peak_bytes": int(cfg.get("predicted_peak_bytes") or 0),
        }
        # Every rank holds the same all-reduced validation figures, so every rank takes the same decision.
        improved = stopper.update(epoch + 1, metrics)
        metrics.update({"best_epoch": stopper.best_epoch, f"best_{stopper.monitor}": stopper.best,
                        "stopped_early": int(stopper.should_stop and epoch + 1 < int(cfg["epochs"])),
                        "epochs_max": int(cfg["epochs"])})
        # FSDP gathers on every rank; DDP replicas are identical, so only rank 0 reads its weights.
        full_state = _full_state_dict(model, strategy) if rank == 0 or strategy == "fsdp" else {}
        if rank == 0 and (improved or best_state is None or stopper.patience == 0):
            best_state = {k: v.detach().clone() for k, v in full_state.items()}
        if rank == 0:
            with tempfile.TemporaryDirectory(prefix="tightfit-ckpt-") as tmp:
                _write_checkpoint(
                    Path(tmp), cfg, _unwrap(model), full_state, optimizer, scheduler, epoch, elapsed,
                    delivered=best_state or full_state, early_stopping=stopper.state_dict(),
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        elapsed_before, run_start = elapsed, time.perf_counter()
        if stopper.should_stop:
            break


def _write_checkpoint(
    directory: Path, cfg: dict[str, Any], model: Any, full_state: dict[str, Any], optimizer: Any,
    scheduler: Any, epoch: int, elapsed: float, *, delivered: dict[str, Any], early_stopping: dict[str, Any],
) -> None:
    """Training state (resume: this epoch's weights, optimizer, early-stopping state) plus the HF-format
    model with its tokenizer (the deliverable: the best epoch's weights ``delivered``)."""
    import torch
    from transformers import AutoTokenizer

    torch.save(
        {
            "model": full_state,
            "optimizer": optimizer.state_dict() if cfg["strategy"] != "fsdp" else {},
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "elapsed_s": elapsed,
            "early_stopping": early_stopping,
        },
        directory / TRAIN_STATE_FILE,
    )
    model_dir = directory / MODEL_SUBDIR
    if cfg["strategy"] == "fsdp":
        from transformers import AutoConfig, AutoModelForSequenceClassification

        config = AutoConfig.from_pretrained(cfg["model_dir"], **_head(cfg))
        plain = AutoModelForSequenceClassification.from_config(config)
        plain.load_state_dict(delivered)
        plain.save_pretrained(model_dir)
    else:
        model.save_pretrained(model_dir, state_dict=delivered)
    AutoTokenizer.from_pretrained(cfg["model_dir"]).save_pretrained(model_dir)


def _read_delivered(model_dir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """The best epoch's weights a checkpoint delivers, as a state dict (to go on tracking after a resume)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=int(cfg["num_labels"]))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _validate(model: Any, shard: Any, batch_size: int, precision: str, device: Any) -> dict[str, float]:
    import torch

    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad(), _autocast(precision, device):
        for batch in shard.iter_eval(max(batch_size, 32), device):
            ids, mask = _trimmed(batch)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            labels = batch["labels"]
            loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(-1) == labels).sum())
            count += len(labels)
    model.train()
    return {"loss_sum": loss_sum, "correct": float(correct), "count": float(count)}
