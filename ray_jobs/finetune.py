"""Ray job entrypoint of fine-tuning / distillation: ``python -m tightfit.ray_jobs.finetune``.

One entrypoint for the three launch paths:
- in-process: ``main(["--config", "cfg.json"])`` or the CLI start a local Ray (``ray.init(num_cpus=...)``);
- Ray Jobs API: ``tightfit.train_launch.submit_finetune`` submits this module with the config as JSON in
  ``$TIGHTFIT_FINETUNE_CONFIG``; inside the job ``ray.init()`` joins the cluster through ``$RAY_ADDRESS``;
- KubeRay: the ``RayJob`` from ``tightfit.train_launch.rayjob_for_finetune`` runs the same command.

The config comes from ``--config FILE`` (JSON or YAML), ``--config-json TEXT`` or the environment variable,
with ``--set key=value`` overrides. It prints one JSON line with the model dir, run id and metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from tightfit.errors import ConfigError, TightfitError
from tightfit.train import FinetuneConfig, FinetuneResult, run_finetune
from tightfit.train_launch import CONFIG_ENV

RESULT_PREFIX = "TIGHTFIT_FINETUNE_RESULT "


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_config(
    path: str | None = None, text: str | None = None, overrides: list[str] | None = None
) -> FinetuneConfig:
    """Read the config from a file, a JSON string or ``$TIGHTFIT_FINETUNE_CONFIG``, then apply overrides."""
    data: dict[str, Any] = {}
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {path} does not exist")
        raw = file.read_text()
        if file.suffix in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(raw) or {}
        else:
            data = json.loads(raw)
    elif text or os.environ.get(CONFIG_ENV):
        try:
            data = json.loads(text or os.environ[CONFIG_ENV])
        except json.JSONDecodeError as exc:
            raise ConfigError(f"the finetune config is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("the finetune config must be a mapping of keys to values")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        data[key.strip()] = _parse_value(value)
    return FinetuneConfig.from_dict(data)


def result_line(result: FinetuneResult) -> str:
    """The one line a submitter can grep from the job logs."""
    payload = {"model_dir": str(result.model_dir), "run_id": result.run_id, "run_name": result.run_name,
               "metrics": result.metrics}
    return RESULT_PREFIX + json.dumps(payload, default=str, sort_keys=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tightfit.ray_jobs.finetune", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="JSON or YAML file with FinetuneConfig keys")
    parser.add_argument("--config-json", help="the config as a JSON string")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.config_json, args.set)
        result = run_finetune(config)
    except TightfitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result_line(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
