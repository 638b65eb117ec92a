"""Ray Serve entrypoint of tightfit's serving app: ``import_path: tightfit.ray_jobs.serve:app_builder``.

The deployment itself is ``tightfit.serve.app`` (the model replicas, which serve the HTTP routes); this
module only turns the Serve config's ``args`` into a ``ServePlan`` and binds it. Start it with `tightfit serve`, `serve run tightfit.ray_jobs.serve:app_builder
plan=...`, or a RayService whose ``serveConfigV2`` is `ServePlan.to_serve_config()`.
"""

import json
from typing import Any

from tightfit.serve.app import TightfitServer, build_app
from tightfit.serve.schema import ServePlan

__all__ = ["TightfitServer", "app_builder", "build_app"]


def app_builder(args: dict[str, Any]) -> Any:
    """Serve config entry point (``args: {plan: <ServePlan dict or its JSON>}``)."""
    plan = args.get("plan")
    if isinstance(plan, str):
        plan = json.loads(plan)
    if not isinstance(plan, dict):
        raise ValueError("app_builder needs args.plan: the ServePlan dict from `tightfit serve --dry-run --json`")
    return build_app(ServePlan.from_dict(plan))
