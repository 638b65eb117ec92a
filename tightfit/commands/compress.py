"""CLI commands: ``compress`` (apply a spec chain), ``methods`` (the registry), ``profile`` (a footprint)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()
DATA_METHODS = ("distill", "prune_structured", "prune_vocab", "onnx_int8_static", "int4_awq", "mixed_int4")  # they read a split


def _load_data(dataset: str | None, limit: int | None, seed: int, require: tuple[str, ...] | None = None) -> Any:
    if not dataset:
        return None
    from tightfit.data import SPLIT_NAMES, load_dataset

    return load_dataset(dataset, seed=seed, limit=limit, require=require or SPLIT_NAMES)


def _format(value: Any) -> str:
    from tightfit.units import format_bytes

    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value) if not isinstance(value, int) or value < 10_000 else f"{value:,} ({format_bytes(value)})"


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @app.command("compress", help="Apply a variant spec (a chain of compression steps) to a model and save the variant.")
    def compress_command(
        spec: str = typer.Option(..., "--spec", help="steps joined by '|', e.g. 'prune_structured:heads=0.5,ffn=0.5|distill|int8_dynamic'"),
        out: Path = typer.Option(..., "--out", help="variant directory to write"),
        model: str = typer.Option("minilm", "--model", help="minilm, smollm2, an HF dir or a variant dir"),
        name: str | None = typer.Option(None, "--name", help="variant name (default: the methods joined)"),
        dataset: str = typer.Option("rotten_tomatoes", "--dataset", help="calibration/distillation data"),
        limit: int | None = typer.Option(None, "--limit", help="cap each split (quick runs)"),
        teacher: str | None = typer.Option(None, "--teacher", help="teacher for distill (default: the base model)"),
        device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when present)"),
        seed: int = typer.Option(0, "--seed"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress, only the result line"),
    ) -> None:
        from tightfit.compress import build_variant, validate_chain
        from tightfit.progress import reporter_for
        from tightfit.spec import VariantSpec

        variant_spec = VariantSpec.parse(spec, name=name)
        validate_chain(variant_spec, "causal_lm" if model == "smollm2" else "classifier")  # fail fast
        needs_data = any(s.method in DATA_METHODS for s in variant_spec.steps)
        data = _load_data(dataset if needs_data else None, limit, seed)
        with reporter_for(console, quiet=quiet, title=f"compress {variant_spec.name}") as progress:
            path = build_variant(model, variant_spec, out, data=data, teacher=teacher, device=device,
                                 progress=progress)
        from tightfit.compress.variant import read_manifest

        manifest = read_manifest(path)
        weights = manifest["files"][manifest["weights"]["file"]]["bytes"]
        console.print(f"wrote variant [bold]{manifest['name']}[/] ({manifest['chain']}) to {path}: "
                      f"weights {_format(weights)}, runtime: {manifest.get('runtime', 'torch')}, "
                      f"run compiled: {manifest['run_compiled']}")

    @app.command("methods", help="List every compression method, its parameters and the devices it runs on.")
    def methods_command() -> None:
        from tightfit.compress.registry import STAGE_NAMES, all_methods

        table = Table(title="compression methods (chain order: structure -> recovery -> precision -> runtime)")
        for column in ("method", "family", "stage", "parameters (defaults)", "devices", "kinds", "what it does"):
            table.add_column(column, overflow="fold")
        for info in all_methods().values():
            params = ", ".join(f"{k}={v}" for k, v in info.parameters().items()) or "-"
            table.add_row(info.name, info.family, STAGE_NAMES[info.stage], params, ", ".join(info.devices),
                          ", ".join(info.kinds), info.description)
        console.print(table)

    @app.command("profile", help="Measure a variant's footprint: params, bytes, peak memory, latency, accuracy.")
    def profile_command(
        variant_dir: Path = typer.Argument(..., help="a variant directory (from `tightfit compress`)"),
        dataset: str | None = typer.Option("rotten_tomatoes", "--dataset", help="evaluation data ('' for none)"),
        seq_len: int = typer.Option(64, "--seq-len", help="tokens per input (padded shape)"),
        quick: bool = typer.Option(False, "--quick", help="fewer repeats, 200 evaluation rows"),
        memory: bool = typer.Option(True, "--memory/--no-memory", help="peak RSS in a fresh subprocess"),
        baseline: Path | None = typer.Option(None, "--baseline", help="a footprint JSON to compute ratios against"),
        json_out: Path | None = typer.Option(None, "--json", help="also write the footprint as JSON"),
        device: str | None = typer.Option(None, "--device"),
        threads: int | None = typer.Option(None, "--threads", help="pinned compute threads (default: every core)"),
    ) -> None:
        from tightfit.errors import ConfigError
        from tightfit.footprint import Footprint
        from tightfit.measure.profile import measure_variant

        if seq_len < 8:
            raise ConfigError(f"--seq-len must be at least 8, got {seq_len}")
        base = None
        if baseline is not None:
            if not baseline.is_file():
                raise ConfigError(f"--baseline {baseline} is not a footprint JSON file (write one with --json)")
            base = Footprint.from_dict(json.loads(baseline.read_text()))
        data = _load_data(dataset, None, 0, require=("test",))  # profiling reads the test split only
        with console.status(f"measuring {variant_dir} ..."):
            fp = measure_variant(variant_dir, data, seq_len=seq_len, baseline=base, memory_subprocess=memory,
                                 quick=quick, device=device, threads=threads)
        table = Table(title=f"footprint of {fp.variant} ({fp.chain})")
        table.add_column("field")
        table.add_column("value", justify="right")
        for key, value in fp.to_dict().items():
            if value is not None and key != "extra":
                table.add_row(key, _format(value))
        for key, value in sorted(fp.extra.items()):
            table.add_row(f"extra.{key}", _format(value))
        console.print(table)
        if fp.noisy_figures:  # never silently used: say which figures, and what the machine was doing
            console.print(f"[yellow]noisy: {', '.join(fp.noisy_figures)} (spread above 10 % or the timing thread off "
                          f"its core; load average {fp.load_avg_1m or 0:.1f}): measure again on a quieter machine[/]")
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(fp.to_dict(), indent=2, default=str))
            console.print(f"wrote {json_out}")
