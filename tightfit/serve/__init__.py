"""Memory-aware serving on Ray Serve: records -> a plan that fits a replica budget -> a running app.

``plan`` sizes every Serve setting from the memory model, ``schema`` is the plan's data, ``replica`` what
runs inside a replica, ``app`` the Serve deployment (imported by Ray, not re-exported here: it imports
Ray), ``autoscale`` the RSS-aware policy, ``calibrate`` fits the memory model on real replicas, and
``deploy`` gathers records and starts the app or writes the RayService.
"""

from tightfit.serve.calibrate import calibrate_serving_memory, with_load_rss
from tightfit.serve.deploy import load_records, make_plan, rayservice_for_plan, start_serving
from tightfit.serve.plan import plan_serving
from tightfit.serve.schema import PlannedVariant, ServePlan

__all__ = [
    "PlannedVariant",
    "ServePlan",
    "calibrate_serving_memory",
    "load_records",
    "make_plan",
    "plan_serving",
    "rayservice_for_plan",
    "start_serving",
    "with_load_rss",
]
