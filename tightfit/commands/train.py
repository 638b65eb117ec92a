"""CLI command ``tightfit finetune``: fine-tune or distill on Ray Train, locally, on a Ray cluster or KubeRay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tightfit.errors import ConfigError


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @app.command("finetune", help="Fine-tune a model on Ray Train (local Ray, a Ray cluster, or a KubeRay RayJob).")
    def finetune_command(
        model: Annotated[str, typer.Option(help="minilm or an HF-format model directory (the student)")] = "minilm",
        dataset: Annotated[str, typer.Option(help="rotten_tomatoes, sms_spam or a .csv/.jsonl file")] = "rotten_tomatoes",
        workers: Annotated[int, typer.Option(help="Ray Train workers (data-parallel)")] = 2,
        cpus_per_worker: Annotated[int, typer.Option(help="CPU threads per worker")] = 1,
        epochs: Annotated[int, typer.Option(help="the most epochs (early stopping may stop sooner)")] = 2,
        patience: Annotated[
            int, typer.Option(help="stop after N epochs without a better --monitor; 0 = run every epoch")
        ] = 1,
        monitor: Annotated[str, typer.Option(help="val_accuracy or val_loss")] = "val_accuracy",
        global_batch: Annotated[int, typer.Option(help="samples per optimizer step, over all workers")] = 32,
        memory_budget: Annotated[
            str | None, typer.Option(help="per-worker memory budget ('4GiB'): picks micro-batch + accumulation")
        ] = None,
        max_length: Annotated[int, typer.Option(help="tokens per example")] = 64,
        lr: Annotated[float, typer.Option(help="peak learning rate")] = 5e-5,
        seed: Annotated[int, typer.Option()] = 0,
        limit: Annotated[int | None, typer.Option(help="cap each split to N rows (quick runs)")] = None,
        teacher: Annotated[str | None, typer.Option(help="teacher model dir: distillation mode")] = None,
        precision: Annotated[str, typer.Option(help="fp32, bf16 or auto")] = "fp32",
        strategy: Annotated[str, typer.Option(help="ddp or fsdp")] = "ddp",
        gradient_checkpointing: Annotated[bool, typer.Option(help="recompute activations in backward")] = False,
        ingest: Annotated[
            str, typer.Option(help="memory, ray_data or auto (memory when the tokenized splits take <= 256 MiB)")
        ] = "auto",
        gpu: Annotated[bool, typer.Option(help="one GPU per worker (NCCL)")] = False,
        out: Annotated[str | None, typer.Option(help="output dir (model/, metrics.json, ray_results/)")] = None,
        storage_path: Annotated[str | None, typer.Option(help="checkpoint storage: a dir or a URI (s3://...)")] = None,
        max_failures: Annotated[int, typer.Option(help="worker-group restarts from the last checkpoint")] = 1,
        tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default local SQLite)")] = None,
        address: Annotated[
            str | None, typer.Option(help="Ray Jobs API address (http://head:8265): submit there")
        ] = None,
        ray_token_file: Annotated[
            Path | None, typer.Option(help="file holding the Ray auth token (default $RAY_AUTH_TOKEN, "
                                       "$RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)")
        ] = None,
        kuberay_namespace: Annotated[
            str | None, typer.Option(help="create a KubeRay RayJob in this namespace instead")
        ] = None,
        image: Annotated[str | None, typer.Option(help="container image of the RayJob")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress, only the result")] = False,
    ) -> None:
        from tightfit.train.config import FinetuneConfig

        if address and kuberay_namespace:
            raise ConfigError("give either --address (Ray Jobs API) or --kuberay-namespace (RayJob), not both")
        config = FinetuneConfig.from_dict({
            "model": model, "dataset": dataset, "workers": workers, "cpus_per_worker": cpus_per_worker,
            "epochs": epochs, "patience": patience, "monitor": monitor, "global_batch": global_batch, "memory_budget": memory_budget,
            "max_length": max_length, "lr": lr, "seed": seed, "limit": limit, "teacher_dir": teacher,
            "precision": precision, "strategy": strategy, "gradient_checkpointing": gradient_checkpointing,
            "ingest": ingest, "use_gpu": gpu, "out_dir": out, "storage_path": storage_path,
            "max_failures": max_failures, "tracking_uri": tracking_uri,
        })
        if kuberay_namespace:
            from tightfit.train.launch import launch_kuberay

            created = launch_kuberay(config, kuberay_namespace, image=image)
            typer.echo(f"created RayJob {created['metadata']['name']} in namespace {kuberay_namespace}")
            return
        if address:
            from tightfit.train.launch import submit_finetune

            outcome = submit_finetune(config, address, token_file=ray_token_file)
            typer.echo(outcome.logs[-4000:])
            typer.echo(f"job {outcome.job_id}: {outcome.status}")
            if outcome.status != "SUCCEEDED":
                raise typer.Exit(1)
            return
        from rich.console import Console

        from tightfit.progress import reporter_for
        from tightfit.train.run import run_finetune  # plans the micro-batch (BudgetError) before Ray starts
        from tightfit.train.stopping import describe_training

        with reporter_for(Console(stderr=True), quiet=quiet, title="finetune") as progress:
            result = run_finetune(config, progress=progress)
        typer.echo(json.dumps({"model_dir": str(result.model_dir), "run_id": result.run_id,
                               "metrics": result.metrics, "validation_curve": result.history}, indent=2, default=str))
        typer.echo(describe_training(result.metrics, result.history))
