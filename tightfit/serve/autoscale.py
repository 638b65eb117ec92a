"""A Ray Serve autoscaling policy that reads the replicas' own RSS beside the request load.

Each replica reports ``rss_fraction`` (RSS / its memory budget) through ``record_autoscaling_stats``.
The policy takes the larger of two needs: the load need (ongoing requests / target per replica, as Serve's
default policy does) and the memory need (replicas whose RSS passes the high-water mark are at their
memory-safe concurrency, so more load needs more replicas, never bigger ones). Serve applies min/max
bounds and the up/down-scale delays around it (``_apply_autoscaling_config``).
"""

from __future__ import annotations

import math
from typing import Any

HIGH_WATER = 0.85  # RSS / budget at which a replica counts as full
LOW_WATER = 0.60


def desired_replicas(
    current: int,
    total_requests: float,
    target_per_replica: float,
    rss_fractions: list[float],
) -> int:
    """Pure decision: replicas needed for the load and for the memory pressure seen."""
    if current <= 0:
        return 1
    load_need = math.ceil(total_requests / target_per_replica) if target_per_replica > 0 else current
    if rss_fractions:
        hottest = max(rss_fractions)
        if hottest >= HIGH_WATER:
            memory_need = current + 1
        elif hottest <= LOW_WATER:
            memory_need = 1
        else:
            memory_need = current
    else:
        memory_need = 1
    return max(1, load_need, memory_need)


def memory_aware_policy(ctx: Any) -> tuple[int, dict[str, Any]]:
    """Serve custom policy entry point: ``AutoscalingContext`` in, (replicas, policy state) out."""
    target = ctx.config.get_target_ongoing_requests() if ctx.config is not None else 2.0
    metrics = ctx.aggregated_metrics or {}
    fractions = [float(v) for v in (metrics.get("rss_fraction") or {}).values()]
    decision = desired_replicas(ctx.current_num_replicas, float(ctx.total_num_requests), float(target), fractions)
    state = dict(ctx.policy_state or {})
    state["tightfit_last_rss_fraction"] = max(fractions) if fractions else None
    return decision, state
