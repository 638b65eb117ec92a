"""`tightfit serve` front door: --dry-run plan, the Serve config, the RayService file, clear budget errors."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from tightfit.cli import app

runner = CliRunner()


def test_dry_run_prints_the_plan():
    result = runner.invoke(app, ["serve", "--memory-budget", "900MiB", "--variant", "minilm", "--no-measure", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "variant        minilm" in result.output and "max_batch_size" in result.output
    assert "predicted peak" in result.output and "900.0 MiB" in result.output


def test_dry_run_json_is_the_serve_config():
    result = runner.invoke(
        app, ["serve", "--memory-budget", "1GiB", "--variant", "minilm", "--no-measure", "--dry-run", "--json", "--port", "8123"]
    )
    assert result.exit_code == 0, result.output
    config = json.loads(result.output)
    assert config["http_options"]["port"] == 8123
    deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
    deployment = deployments["TightfitServer"]
    assert deployment["ray_actor_options"]["memory"] <= 2**30
    assert deployment["max_queued_requests"] > 0
    assert set(deployments) == {"TightfitServer"}  # one hop: the proxy routes straight to the model replicas


def test_rayservice_manifest_file(tmp_path):
    out = tmp_path / "rs.yaml"
    result = runner.invoke(
        app, ["serve", "--memory-budget", "1GiB", "--variant", "minilm", "--no-measure", "--rayservice-manifest", str(out)]
    )
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(out.read_text())
    assert manifest["kind"] == "RayService"
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert serve_config["applications"][0]["import_path"] == "tightfit.ray_jobs.serve:app_builder"


def test_budget_too_small_is_a_clear_error():
    from tightfit.errors import BudgetError

    result = runner.invoke(app, ["serve", "--memory-budget", "300MiB", "--variant", "minilm", "--no-measure", "--dry-run"])
    assert isinstance(result.exception, BudgetError)
    assert "'minilm', needs about" in str(result.exception)


def test_missing_source_and_bad_budget():
    from tightfit.errors import ConfigError

    result = runner.invoke(app, ["serve", "--memory-budget", "1GiB", "--dry-run"])
    assert isinstance(result.exception, ConfigError) and "say what to serve" in str(result.exception)
    result = runner.invoke(app, ["serve", "--memory-budget", "1024", "--variant", "minilm", "--dry-run"])
    assert isinstance(result.exception, ConfigError) and "no unit" in str(result.exception)
