"""Ray job entrypoint of fine-tuning / distillation: ``python -m tightfit.ray_jobs.finetune``.

One entrypoint for the three launch paths:
- in-process: ``main(["--config", "cfg.json"])`` or the CLI start a local Ray on 127.0.0.1 (``settings.start_local_ray``);
- Ray Jobs API: ``tightfit.train.launch.submit_finetune`` submits this module with the config as JSON in
  ``$TIGHTFIT_FINETUNE_CONFIG``; inside the job ``ray.init()`` joins the cluster through ``$RAY_ADDRESS``;
- KubeRay: the ``RayJob`` from ``tightfit.train.launch.rayjob_for_finetune`` runs the same command.

The config comes from ``--config FILE`` (JSON or YAML), ``--config-json TEXT`` or the environment variable,
with ``--set key=value`` overrides. It prints one JSON line with the model dir, run id and metrics.
"""

from __future__ import annotations

import argparse
import json
import sys

from tightfit.config import load_finetune_config
from tightfit.errors import TightfitError
from tightfit.train.run import FinetuneResult, run_finetune

RESULT_PREFIX = "TIGHTFIT_FINETUNE_RESULT "


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
        config = load_finetune_config(args.config, args.config_json, args.set)
        result = run_finetune(config)
    except TightfitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result_line(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
