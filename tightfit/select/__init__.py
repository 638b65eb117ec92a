"""Selection: the Pareto front of measured footprints, the variant that fits a ``HardwareTarget`` (and why
the others do not), the Pareto plot and the HTML report."""

from tightfit.select.choose import (
    Miss,
    Selection,
    fit_misses,
    fit_reasons,
    pareto_front,
    registry_aliases,
    select_per_tier,
    select_variant,
    tier_alias,
)
from tightfit.select.plot import draw_pareto, pareto_plot
from tightfit.select.report import render_report, write_report

__all__ = [
    "Miss",
    "Selection",
    "draw_pareto",
    "fit_misses",
    "fit_reasons",
    "pareto_front",
    "pareto_plot",
    "registry_aliases",
    "render_report",
    "select_per_tier",
    "select_variant",
    "tier_alias",
    "write_report",
]
