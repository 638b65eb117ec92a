"""KFP component body of the deploy step: a Ray Serve plan and a KubeRay RayService for the chosen variant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tightfit.components.common import as_object, stopwatch

from tightfit.footprint import Footprint

DEFAULT_SERVE_BUDGET = 1 << 30


def deploy_step(
    chosen_dir: str,
    selection_json: str,
    model_uri: str,
    target_json: str,
    namespace: str,
    out_dir: str,
) -> tuple[str, dict[str, Any]]:
    """Plan serving for the chosen variant (``tightfit.serve.plan.plan_serving``) within the target's
    memory budget, and write ``plan.json``, ``serve_config.yaml`` and the KubeRay ``rayservice.yaml``."""
    import yaml

    from tightfit.errors import BudgetError
    from tightfit.kube import kuberay_name, rayservice_manifest
    from tightfit.serve.plan import ServeOptions, plan_serving
    from tightfit.spec import HardwareTarget

    stats: dict[str, Any] = {}
    with stopwatch(stats):
        selection = as_object(selection_json)
        record = Footprint.from_dict(selection["chosen_record"])
        target = HardwareTarget.model_validate(as_object(target_json) or {})
        budget = target.memory_bytes or DEFAULT_SERVE_BUDGET
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        try:
            plan = plan_serving(
                [record],
                budget,
                ServeOptions(latency_slo_ms=target.latency_ms, min_accuracy=target.min_accuracy),
                variant=record.variant,
                sources={record.variant: chosen_dir},
            )
        except BudgetError as exc:
            # Selection checks memory with the planner's own figure, so this is rare (e.g. a latency SLO that
            # the batch-time estimate rules out): keep the reason and carry on.
            (out / "plan.json").write_text(json.dumps({"deployed": False, "error": str(exc)}, indent=2))
            return f"not deployed: {exc}", {**stats, "deployed": 0}
        serve_config = plan.to_serve_config()
        manifest = rayservice_manifest(
            kuberay_name(f"tightfit-{record.variant}", "RayService"),
            namespace=namespace,
            serve_config=serve_config,
        )
        (out / "plan.json").write_text(json.dumps({"deployed": True, "model_uri": model_uri, **plan.to_dict()},
                                                  indent=2, default=str))
        (out / "serve_config.yaml").write_text(yaml.safe_dump(serve_config, sort_keys=False))
        (out / "rayservice.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    stats.update({"deployed": 1, "predicted_peak_bytes": plan.predicted_peak_bytes, "budget_bytes": budget,
                  "max_batch_size": plan.primary.max_batch_size})
    return plan.describe(), stats
