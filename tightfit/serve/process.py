"""What a tightfit replica process keeps out: pandas and pyarrow.

Two imports that a replica pays for and never uses, both from Ray:
- Ray Serve's replica module imports pandas whenever it is installed (``ray.serve._private.utils``: ``try:
  import pandas``), only to encode a DataFrame that a deployment returns.
- Every Ray worker's serialization context registers Ray Data's Arrow serializers, importing pyarrow
  (``ray.util.serialization_addons`` -> ``ray._private.arrow_serialization``; it skips them when pyarrow is
  missing), for Arrow tables that a replica never receives.
tightfit's replicas answer JSON and never touch a DataFrame or an Arrow table, so their processes keep both
out. Measured on the 2-core AMD machine, a bare Serve replica: 206 MiB with both, 167 MiB without pandas
(2026-11-27), 141 MiB without either (2026-11-28); an idle lean ONNX replica 282 MiB with pandas, 223 MiB
without; an idle torch fp32 replica 676 MiB with, 577 MiB without (the latter also trims its heap after
loading).

It has to happen before Ray loads the replica class, so it runs as Ray's worker setup hook: Ray's worker
runs the function named by ``__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR`` before any actor code. Ray sets that
variable itself only for a job-level ``worker_process_setup_hook``; a job-level hook would reach every
worker (Ray Train's and Ray Data's need pandas and pyarrow), so the replicas' own ``runtime_env.env_vars``
set it (``replica_env_vars``). The variable is Ray's internal name (Ray 2.60): the serving tests assert
that a replica's process has neither module, so a Ray that renames it fails there, not silently.
Set ``TIGHTFIT_REPLICA_KEEP_PANDAS=1`` to keep Ray's default (both imported).

Standard library only: Ray imports this module in the bare worker, before anything else.
"""

from __future__ import annotations

import os
import sys

SETUP_HOOK = "tightfit.serve.process.keep_pandas_out"
RAY_SETUP_HOOK_ENV_VAR = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"  # ray._private.ray_constants
KEPT_OUT = ("pandas", "pyarrow")
KEEP_PANDAS_ENV = "TIGHTFIT_REPLICA_KEEP_PANDAS"


def keep_pandas_out() -> None:
    """Make ``import pandas`` and ``import pyarrow`` fail with ModuleNotFoundError in this process (Serve
    falls back to no DataFrame encoder, Ray to no Arrow serializers). ``sys.modules[name] = None`` is
    Python's documented way to block an import."""
    for name in KEPT_OUT:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def replica_env_vars() -> dict[str, str]:
    """The env vars a tightfit replica's ``runtime_env`` carries: the setup hook, unless turned off."""
    if os.environ.get(KEEP_PANDAS_ENV, "").strip().lower() in {"1", "true", "yes"}:
        return {}
    return {RAY_SETUP_HOOK_ENV_VAR: SETUP_HOOK}
