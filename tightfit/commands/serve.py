"""CLI: `tightfit serve`: plan and start memory-aware serving on Ray Serve (or just print the plan)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tightfit.errors import ConfigError


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @app.command("serve", help="Serve the best variant that fits a memory budget on Ray Serve.")
    def serve_command(
        memory_budget: str = typer.Option(..., "--memory-budget", help="Memory per replica, e.g. 1GiB or 800MB."),
        variant: str | None = typer.Option(
            None, "--variant", help="A variant dir, HF dir or built-in model (minilm, smollm2); with "
            "--footprints/--from-mlflow: the record name to serve."
        ),
        footprints: Path | None = typer.Option(None, "--footprints", help="Local footprint JSON file (list of records)."),
        from_mlflow: str | None = typer.Option(None, "--from-mlflow", help="MLflow experiment holding the footprints."),
        tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI."),
        latency_slo: str | None = typer.Option(None, "--latency-slo", help="Per-request latency SLO, e.g. 200ms."),
        min_accuracy: float | None = typer.Option(None, "--min-accuracy", help="Accuracy floor, a fraction."),
        accuracy_tolerance: float = typer.Option(
            0.005, "--accuracy-tolerance", help="Quality this close to the best counts as equal (0.01: 1 point); "
            "then the leanest, fastest variant wins."
        ),
        max_tokens: int | None = typer.Option(None, "--max-tokens", help="Token cap per text (default 64, LMs 128)."),
        max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Generation cap per request (LMs)."),
        replicas: int = typer.Option(1, "--replicas", min=1, help="Replicas to start with."),
        max_replicas: int | None = typer.Option(None, "--max-replicas", help="Autoscale up to this many replicas."),
        cpus: float = typer.Option(1.0, "--cpus-per-replica", help="CPUs (and torch threads) per replica."),
        pool_size: int = typer.Option(
            3, "--pool-size", min=1, help="Variants a replica may serve (multiplexed, evicted by bytes)."
        ),
        calibration: Path | None = typer.Option(None, "--calibration", help="Serving memory model JSON to use."),
        measure: bool = typer.Option(True, "--measure/--no-measure", help="Measure load RSS where records lack it."),
        address: str | None = typer.Option(None, "--address", help="Ray cluster address (default: start a local Ray)."),
        host: str = typer.Option("127.0.0.1", "--host", help="HTTP host to listen on."),
        port: int = typer.Option(8000, "--port", min=1, max=65535, help="HTTP port."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and exit."),
        as_json: bool = typer.Option(False, "--json", help="With --dry-run: print the Serve config as JSON."),
        rayservice_manifest: Path | None = typer.Option(
            None, "--rayservice-manifest", help="Write the KubeRay RayService YAML for this plan and exit."
        ),
        namespace: str = typer.Option("default", "--namespace", help="Namespace for the RayService manifest."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress while Ray and the replicas start."),
    ) -> None:
        from rich.console import Console

        from tightfit.memory.serving import ServingMemoryModel
        from tightfit.serve.deploy import load_records, start_serving
        from tightfit.serve.plan import ServeOptions, plan_serving
        from tightfit.units import parse_bytes, parse_millis

        console = Console()
        budget = parse_bytes(memory_budget, field="--memory-budget")
        slo = parse_millis(latency_slo, field="--latency-slo") if latency_slo else None
        if footprints is not None and from_mlflow is not None:
            raise ConfigError("give either --footprints or --from-mlflow, not both")
        records, base_dir = load_records(
            footprints=footprints, from_mlflow=from_mlflow,
            variant=None if (footprints or from_mlflow) else variant, tracking_uri=tracking_uri,
        )
        if measure:
            from tightfit.serve.calibrate import with_load_rss
            from tightfit.settings import MEMORY_ROUNDS

            records = with_load_rss(records, rounds=MEMORY_ROUNDS)
        model = ServingMemoryModel.load(calibration) if calibration else ServingMemoryModel()
        options = ServeOptions(
            latency_slo_ms=slo, min_accuracy=min_accuracy, accuracy_tolerance=accuracy_tolerance,
            max_tokens=max_tokens, max_new_tokens=max_new_tokens,
            num_replicas=replicas, max_replicas=max_replicas, cpus_per_replica=cpus, pool_size=pool_size,
        )
        plan = plan_serving(
            records, budget, options, model=model, variant=variant if (footprints or from_mlflow) else None,
            base_dir=base_dir,
        )
        if rayservice_manifest is not None:
            import yaml

            from tightfit.serve.deploy import rayservice_for_plan

            manifest = rayservice_for_plan(plan, namespace=namespace)
            rayservice_manifest.parent.mkdir(parents=True, exist_ok=True)
            rayservice_manifest.write_text(yaml.safe_dump(manifest, sort_keys=False))
            typer.echo(plan.describe())
            console.print(f"wrote RayService manifest to {rayservice_manifest}")
            return
        if dry_run:
            if as_json:
                typer.echo(json.dumps(plan.to_serve_config(host=host, port=port), indent=2))
            else:
                typer.echo(plan.describe())
            return
        from tightfit.progress import reporter_for

        typer.echo(plan.describe())
        with reporter_for(console, quiet=quiet, title="serve") as progress:
            url = start_serving(plan, address=address, host=host, port=port, progress=progress)
        console.print(f"serving at {url}  (POST {url}/v1/classify, {url}/v1/generate; GET {url}/healthz)")
        console.print("press Ctrl+C to stop")
        import time

        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            from ray import serve

            serve.shutdown()
