"""Ray Train fine-tuning benchmark against plain PyTorch -> benchmarks/results/finetune.json.

Same model (MiniLM classifier), same data (Rotten Tomatoes, max_length 64), same step (AdamW, linear
warm-up/decay, grad clip, each batch cut to its longest sequence as tightfit's loop cuts it) everywhere;
rounds interleave the runs so the machine's drift hits all alike.

- ``ray_overhead`` = wall(tightfit's Ray Train path, 1 worker x 1 thread) / wall(a plain loop, 1 thread) - 1,
  on the whole train split for 2 epochs (``--overhead-rows``/``--overhead-epochs``). The Ray wall covers
  building the trainer and the whole ``trainer.fit()``: worker start-up, Ray Data ingest, validation and a
  checkpoint every epoch (an already running local Ray is not counted: it is started before the clock).
  The plain loop does the same work with its own data loading (tokenize, DataLoader) and checkpoints
  (training state + the HF model every epoch, the two newest kept), validation included.
- ``scaling_2v1`` = samples/s(Ray, 2 workers x 1 thread, summed) / samples/s(Ray, 1 x 1), and
  ``torchrun_scaling_2v1`` the same with plain ``torch.distributed`` DDP launched by ``torchrun`` (2 processes
  x 1 thread vs 1 x 1, ``benchmarks/_ddp_worker.py``): per-epoch training-loop rates of the last epoch, on
  ``--scaling-rows`` rows. ``scaling_vs_torchrun`` = Ray's / torchrun's (goal >= 0.95).
- ``memory_prediction_error``: max over workers of |measured peak RSS - predicted| / measured (Ray runs).
- ``time_to_target_s``: training wall time until validation accuracy first reaches the target (2 workers).

The memory model is first calibrated in the same run (1 worker at micro-batch 8 and 32, on the scaling runs'
rows and epochs; ``--no-calibrate`` uses the stored constants; ``--calibrate`` only calibrates and prints).
``--quick`` is the reduced protocol (256 rows, 1 round, no calibration) that proves the script end to end; the
figures it writes are not claims.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, spread, write_results
from _ddp_worker import trimmed

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAX_LENGTH, BATCH, EPOCHS, LR, TARGET = 64, 64, 2, 2e-4, 0.6
SCALING_ROWS = 1024
WORKER = Path(__file__).resolve().parent / "_ddp_worker.py"


def _schedule(total: int) -> Any:
    warmup = int(0.1 * total)
    return lambda s: (s + 1) / max(warmup, 1) if s < warmup else max(0.0, (total - s) / max(total - warmup, 1))


def plain_fit_wall(rows: int | None, epochs: int, out: Path) -> dict[str, Any]:
    """The plain-PyTorch reference of ``trainer.fit()``: load, tokenize, train, validate and checkpoint every
    epoch, in this process on 1 thread. Returns its wall time and per-epoch rates."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers import logging as hf_logging

    from tightfit.assets import minilm_path
    from tightfit.data import load_dataset

    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    data = load_dataset("rotten_tomatoes", seed=0, limit=rows)  # reading the CSV is outside both clocks
    started = time.perf_counter()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())

    def tensors(frame: Any) -> TensorDataset:
        enc = tokenizer([str(t) for t in frame["text"]], padding="max_length", truncation=True,
                        max_length=MAX_LENGTH, return_tensors="pt")
        return TensorDataset(enc["input_ids"], enc["attention_mask"], torch.tensor(frame["label"].to_numpy()))

    train = DataLoader(tensors(data.train), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(tensors(data.validation), batch_size=max(BATCH, 32))
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=data.num_labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(len(train) * epochs))
    rates, kept = [], []
    for epoch in range(epochs):
        model.train()
        epoch_start, seen = time.perf_counter(), 0
        for ids, mask, y in train:
            ids, mask = trimmed(ids, mask)
            loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits.float(), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            seen += len(y)
        rates.append(seen / (time.perf_counter() - epoch_start))
        model.eval()
        with torch.no_grad():
            for ids, mask, y in val:
                ids, mask = trimmed(ids, mask)
                torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits.float(), y)
        ckpt = out / f"checkpoint_{epoch:03d}"
        ckpt.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"model": state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "epoch": epoch}, ckpt / "train_state.pt")
        model.save_pretrained(ckpt / "model", state_dict=state)
        tokenizer.save_pretrained(ckpt / "model")
        kept.append(ckpt)
        while len(kept) > 2:
            shutil.rmtree(kept.pop(0))
    return {"wall_s": time.perf_counter() - started, "samples_per_s": rates, "train_rows": len(data.train)}


def ray_fit_wall(workers: int, rows: int | None, epochs: int, tmp: Path) -> dict[str, Any]:
    """tightfit's Ray Train path, timed from building the trainer (Ray Data ingest) to the end of
    ``trainer.fit()``; Ray is started before the clock and shut down after."""
    import ray
    from mlflow import MlflowClient

    from tightfit.assets import resolve_model_path
    from tightfit.data import load_dataset
    from tightfit.train import FinetuneConfig
    from tightfit.train.run import build_trainer, ensure_ray, open_training_run, plan_training, run_paths

    config = FinetuneConfig(
        workers=workers, cpus_per_worker=1, epochs=epochs, patience=0, global_batch=BATCH, micro_batch=BATCH,
        lr=LR, limit=rows, max_length=MAX_LENGTH, seed=0, out_dir=str(tmp / f"fit{workers}-{time.time_ns()}"),
        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", evaluate_test=False, log_model=False,
    )
    model_path, _ = resolve_model_path(config.model)
    data = load_dataset(config.dataset, seed=config.seed, limit=config.limit)
    plan = plan_training(config, model_path, data)
    paths = run_paths(config, distilling=False)
    client = MlflowClient(paths.tracking_uri)
    run_id = open_training_run(client, config, plan, paths)
    started_ray = ensure_ray(config, plan)
    try:
        started = time.perf_counter()
        trainer = build_trainer(config, plan, data, model_path, None, paths, run_id)
        result = trainer.fit()
        wall = time.perf_counter() - started
    finally:
        if started_ray:
            ray.shutdown()
    speeds = client.get_metric_history(run_id, "worker0.samples_per_s")
    return {"wall_s": wall, "epochs": int(result.metrics["epoch"]), "train_rows": len(data.train),
            "samples_per_s_rank0": [m.value for m in sorted(speeds, key=lambda m: m.step)]}


def torchrun_rate(procs: int, rows: int, epochs: int, tmp: Path) -> dict[str, Any]:
    """Plain DDP under ``torchrun`` (``procs`` x 1 thread): the last epoch's summed training-loop samples/s."""
    from tightfit.track.server import free_port

    out = tmp / f"torchrun-{procs}-{time.time_ns()}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(procs),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(WORKER), "--rows", str(rows),
           "--epochs", str(epochs), "--global-batch", str(BATCH), "--lr", str(LR), "--max-length", str(MAX_LENGTH),
           "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200, check=False)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"torchrun with {procs} process(es) failed:\n{proc.stderr[-3000:]}")
    found = json.loads(out.read_text())
    return {"samples_per_s": found["samples_per_s"][-1], "per_epoch": found["samples_per_s"],
            "micro_batch": found["micro_batch"]}


def ray_run(workers: int, tmp: Path, **overrides: Any) -> dict[str, Any]:
    """One Ray Train run; rank 0's last report plus every worker's figures from MLflow (scaling, memory)."""
    from mlflow import MlflowClient

    from tightfit import names
    from tightfit.train import FinetuneConfig, run_finetune

    values: dict[str, Any] = dict(
        workers=workers, cpus_per_worker=1, epochs=EPOCHS, patience=0, global_batch=BATCH, micro_batch=BATCH,
        lr=LR, limit=SCALING_ROWS, max_length=MAX_LENGTH, seed=0, out_dir=str(tmp / f"w{workers}-{time.time_ns()}"),
        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", target_accuracy=TARGET, evaluate_test=False, log_model=False,
    )
    values.update(overrides)
    result = run_finetune(FinetuneConfig(**values))
    client = MlflowClient(values["tracking_uri"])
    per_worker = {}
    for rank in range(workers):
        peaks = client.get_metric_history(result.run_id, names.worker_metric(rank, names.PEAK_RSS_BYTES))
        speeds = client.get_metric_history(result.run_id, names.worker_metric(rank, names.SAMPLES_PER_S))
        per_worker[rank] = {"peak_rss_bytes": max(m.value for m in peaks),
                            "samples_per_s_last_epoch": max(speeds, key=lambda m: m.step).value}
    sps = sum(w["samples_per_s_last_epoch"] for w in per_worker.values())
    predicted = result.metrics["predicted_peak_bytes"]
    errors = [abs(w["peak_rss_bytes"] - predicted) / w["peak_rss_bytes"] for w in per_worker.values()]
    return {"samples_per_s": sps, "per_worker": per_worker, "predicted_peak_bytes": predicted,
            "memory_prediction_error": max(errors), "time_to_target_s": result.metrics.get("time_to_target_s"),
            "val_accuracy": result.metrics["val_accuracy"], "micro_batch": result.metrics["micro_batch"]}


def calibrate(tmp: Path, precisions: tuple[str, ...] = ("fp32",)) -> dict[str, Any]:
    """Peak RSS of 1 worker at micro-batch 8 and 32 -> activation scale + runtime overhead (printed, returned)."""
    from tightfit.assets import minilm_path
    from tightfit.memory import training
    from tightfit.memory.training import ModelShape, fit_calibration

    shape = ModelShape.from_pretrained_dir(minilm_path())
    found: dict[str, Any] = {}
    for precision in precisions:
        measured = {}
        for micro in (8, 32):
            # the scaling runs' rows and epochs: peak RSS grows over a run's steps (the allocator keeps what
            # batches of many lengths left), so a short run (160 rows, 1 epoch: 5 steps at 32) reads it low
            run = ray_run(1, tmp, micro_batch=micro, global_batch=micro, precision=precision)
            measured[micro] = int(run["per_worker"][0]["peak_rss_bytes"])
        cal = fit_calibration(shape, measured, seq_len=MAX_LENGTH, precision=precision,  # type: ignore[arg-type]
                              note=f"measured peak RSS {measured} (1 worker x 1 thread, seq_len {MAX_LENGTH}, "
                                   f"{SCALING_ROWS} rows x {EPOCHS} epochs)")
        print(f"{precision}: {cal}")
        training.CALIBRATION[precision] = cal
        found[precision] = {"activation_scale": cal.activation_scale,
                            "runtime_overhead_bytes": cal.runtime_overhead_bytes, "measured": measured}
    return found


def main() -> None:
    global BATCH, EPOCHS, SCALING_ROWS
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="reduced protocol: proves the script, claims nothing")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calibrate", action="store_true", help="only calibrate the memory model and print it")
    parser.add_argument("--no-calibrate", action="store_true", help="use the constants stored in code")
    parser.add_argument("--global-batch", type=int, default=BATCH)
    parser.add_argument("--scaling-rows", type=int, default=SCALING_ROWS, help="training rows of the scaling runs")
    parser.add_argument("--overhead-rows", type=int, default=0, help="training rows of ray_overhead (0 = all)")
    parser.add_argument("--overhead-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs of the scaling runs")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.no_calibrate, args.scaling_rows, args.overhead_rows = 1, True, 256, 256
    BATCH, EPOCHS, SCALING_ROWS = args.global_batch, args.epochs, args.scaling_rows
    overhead_rows = args.overhead_rows or None
    tmp = Path(tempfile.mkdtemp(prefix="tightfit-bench-finetune-"))
    os.environ.setdefault("TIGHTFIT_HOME", str(tmp / "home"))
    if args.calibrate:
        calibrate(tmp)
        return
    calibration = None if args.no_calibrate else calibrate(tmp)
    plain, ray_fit, one, two, tr_one, tr_two = [], [], [], [], [], []
    for round_no in range(args.rounds):  # interleaved: the machine's drift hits every run alike
        print(f"round {round_no + 1}/{args.rounds}: overhead (plain loop, Ray 1x1), scaling (Ray, torchrun)")
        plain.append(plain_fit_wall(overhead_rows, args.overhead_epochs, tmp / f"plain-{round_no}"))
        ray_fit.append(ray_fit_wall(1, overhead_rows, args.overhead_epochs, tmp))
        one.append(ray_run(1, tmp))
        two.append(ray_run(2, tmp))
        tr_one.append(torchrun_rate(1, SCALING_ROWS, EPOCHS, tmp))
        tr_two.append(torchrun_rate(2, SCALING_ROWS, EPOCHS, tmp))
    overheads = [r["wall_s"] / p["wall_s"] - 1 for p, r in zip(plain, ray_fit, strict=True)]
    ray_scaling = [b["samples_per_s"] / a["samples_per_s"] for a, b in zip(one, two, strict=True)]
    tr_scaling = [b["samples_per_s"] / a["samples_per_s"] for a, b in zip(tr_one, tr_two, strict=True)]
    scaling_2v1 = median([r["samples_per_s"] for r in two]) / median([r["samples_per_s"] for r in one])
    torchrun_2v1 = median([r["samples_per_s"] for r in tr_two]) / median([r["samples_per_s"] for r in tr_one])
    targets = [r["time_to_target_s"] for r in two if r["time_to_target_s"] is not None]
    mem_errors = [r["memory_prediction_error"] for r in one + two]
    figures = {
        "ray_overhead": median(overheads),
        "scaling_2v1": scaling_2v1,
        "torchrun_scaling_2v1": torchrun_2v1,
        "scaling_vs_torchrun": scaling_2v1 / torchrun_2v1,
        # Ray's own samples/s over plain DDP's on the same cores and workers (medians): the rates behind the ratios
        "rate_vs_torchrun": {
            "1x1": median([r["samples_per_s"] for r in one]) / median([r["samples_per_s"] for r in tr_one]),
            "2x1": median([r["samples_per_s"] for r in two]) / median([r["samples_per_s"] for r in tr_two])},
        "time_to_target_s": median(targets) if targets else None,
        "memory_prediction_error": median(mem_errors),
        "memory_prediction_error_max": max(mem_errors),
        "spread": {"ray_overhead": spread(overheads), "scaling_2v1": spread(ray_scaling),
                   "torchrun_scaling_2v1": spread(tr_scaling)},
        "wall_s": {"plain_loop": [p["wall_s"] for p in plain], "ray_fit_1x1": [r["wall_s"] for r in ray_fit]},
        "samples_per_s": {"ray_1x1": [r["samples_per_s"] for r in one], "ray_2x1": [r["samples_per_s"] for r in two],
                          "torchrun_1x1": [r["samples_per_s"] for r in tr_one],
                          "torchrun_2x1": [r["samples_per_s"] for r in tr_two],
                          "plain_loop_per_epoch": [p["samples_per_s"] for p in plain],
                          "ray_fit_1x1_per_epoch": [r["samples_per_s_rank0"] for r in ray_fit]},
        "target_val_accuracy": TARGET,
        "memory_calibration": calibration or "constants stored in tightfit.memory.training.CALIBRATION",
        "runs": {"ray_1x1": one, "ray_2x1": two},
        "setup": {"model": "minilm", "dataset": "rotten_tomatoes", "max_length": MAX_LENGTH, "global_batch": BATCH,
                  "overhead_train_rows": plain[0]["train_rows"], "overhead_epochs": args.overhead_epochs,
                  "scaling_train_rows": SCALING_ROWS, "scaling_epochs": EPOCHS,
                  "note": "1 thread per worker/process; 2 workers x 1 thread use both cores beside Ray's own processes"},
    }
    protocol = {"quick": args.quick, "rounds": args.rounds, "calibrated": calibration is not None,
                "command": "python benchmarks/finetune.py " + " ".join(sys.argv[1:])}
    write_results("finetune", figures, protocol=protocol)
    print(f"ray_overhead {figures['ray_overhead']:.3f} (goal <= 0.10; rounds {[round(o, 3) for o in overheads]})")
    print(f"scaling_2v1 {scaling_2v1:.2f}, torchrun_scaling_2v1 {torchrun_2v1:.2f}, "
          f"scaling_vs_torchrun {figures['scaling_vs_torchrun']:.3f} (goal >= 0.95)")
    print(f"memory_prediction_error {figures['memory_prediction_error']:.3f} (goal <= 0.15)")


if __name__ == "__main__":
    main()
