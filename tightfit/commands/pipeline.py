"""CLI commands: ``run`` (the default pipeline locally), ``compile`` (KFP IR YAML), ``submit`` (to a KFP API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from tightfit.commands.start import print_next_steps
from tightfit.errors import BackendError, ConfigError

PIPELINE_NAMES = ("fit_for_serving", "compress_sweep")


def _parse_value(text: str) -> Any:
    """A ``-p key=value`` value: JSON when it parses (numbers, booleans, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["epochs=2", "target={...}"]`` -> ``{"epochs": 2, "target": "{...}"}`` with clear errors."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"parameter {item!r} must look like key=value (e.g. -p epochs=2)")
        parsed = _parse_value(value)
        # KFP string parameters stay strings even when they look like JSON objects (e.g. the target).
        out[key.strip()] = value if isinstance(parsed, dict) else parsed
    return out


def compile_pipeline(name: str, output: Path, *, config_file: Path | None = None, quick: bool = False) -> Path:
    """Compile pipeline ``name`` to KFP IR YAML and check the file loads back with kfp's own loader."""
    from kfp import compiler, components

    from tightfit.config import load_config
    from tightfit.pipelines.local import build_pipeline

    config = load_config(config_file, profile="quick" if quick else None)
    func = build_pipeline(name, config)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(func, str(output))
    components.load_component_from_file(str(output))
    return output


def submit_pipeline(
    package: Path, *, host: str, experiment: str, params: dict[str, Any], run_name: str | None = None
) -> str:
    """Create a run of a compiled pipeline on a KFP API server; returns the run id."""
    if not package.exists():
        raise ConfigError(f"pipeline package {package} does not exist; make it with `tightfit compile`")
    import uuid

    import kfp

    # Each submitted run gets its own MLflow parent run unless the caller names one.
    params = {"pipeline_run": f"submit-{uuid.uuid4().hex[:12]}", **params}
    try:
        client = kfp.Client(host=host)
        result = client.create_run_from_pipeline_package(
            str(package), arguments=params, experiment_name=experiment, run_name=run_name
        )
    except (OSError, ConnectionError) as exc:
        raise BackendError(f"cannot reach the KFP API at {host}: {exc}. Check --host (e.g. http://localhost:8080)") from None
    except Exception as exc:
        if _is_connection_error(exc):
            raise BackendError(
                f"cannot reach the KFP API at {host} ({type(exc).__name__}); check --host and that the "
                "ml-pipeline service is reachable (e.g. `kubectl port-forward svc/ml-pipeline-ui 8080:80`)"
            ) from None
        raise BackendError(f"the KFP API at {host} refused the run: {exc}") from None
    return str(result.run_id)


def _is_connection_error(exc: BaseException) -> bool:
    import urllib3

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, urllib3.exceptions.HTTPError | ConnectionError | OSError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @app.command("run", help="Run the default pipeline (fit_for_serving) locally with kfp.local, Ray and MLflow.")
    def run_command(
        quick: bool = typer.Option(False, "--quick", help="the quick profile: small data, few variants (<= 5 min)"),
        config: Path | None = typer.Option(None, "--config", "-c", help="YAML config, or a packaged one by name: "
                                           "default, smollm2 (default: tightfit/configs/default.yaml)"),
        pipeline: str = typer.Option("fit_for_serving", "--pipeline", help="fit_for_serving or compress_sweep"),
        run_dir: Path | None = typer.Option(None, "--run-dir", help="where runs, cache and MLflow live (./tightfit-runs)"),
        tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow URI (default: SQLite in the run dir)"),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="stream every task's log to the console"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress while it runs, only the summary"),
    ) -> None:
        from rich.console import Console

        from tightfit.config import load_config
        from tightfit.pipelines.local import print_summary, run_local

        console = Console()
        cfg = load_config(config, profile="quick" if quick else None)
        console.print(
            f"tightfit run: {pipeline} ({cfg.profile} profile), {cfg.model} on {cfg.dataset}, "
            f"{len(cfg.variants)} variants, target: {cfg.target.describe()}"
        )
        summary = run_local(
            cfg, pipeline=pipeline, run_dir=run_dir, tracking_uri=tracking_uri, console=console, show_logs=verbose,
            quiet=quiet,
        )
        print_summary(summary, console)
        print_next_steps(summary, console, cfg.tracking.experiment)

    @app.command("compile", help="Compile a pipeline to KFP IR YAML (fit_for_serving, compress_sweep).")
    def compile_command(
        name: str = typer.Argument(..., help="fit_for_serving or compress_sweep"),
        output: Path = typer.Option(..., "--output", "-o", help="the YAML file to write"),
        config: Path | None = typer.Option(None, "--config", "-c", help="YAML config for defaults and resources"),
        quick: bool = typer.Option(False, "--quick", help="use the quick profile's defaults"),
    ) -> None:
        path = compile_pipeline(name, output, config_file=config, quick=quick)
        typer.echo(f"compiled {name} -> {path}")

    @app.command("submit", help="Submit a compiled pipeline to a KFP API server.")
    def submit_command(
        package: Path = typer.Argument(..., help="the compiled pipeline YAML"),
        host: str = typer.Option(..., "--host", help="KFP API endpoint, e.g. http://localhost:8080"),
        experiment: str = typer.Option("tightfit", "--experiment", help="KFP experiment name"),
        param: list[str] = typer.Option([], "--param", "-p", help="pipeline argument key=value (repeatable)"),
        run_name: str | None = typer.Option(None, "--run-name", help="name of the run"),
    ) -> None:
        run_id = submit_pipeline(package, host=host, experiment=experiment, params=parse_params(param), run_name=run_name)
        typer.echo(f"submitted run {run_id} to {host} (experiment {experiment})")
