"""Selection: the Pareto front of measured footprints, the variant that fits a ``HardwareTarget`` (and why
the others do not), the Pareto plot and the HTML report."""

from tightfit.select.choose import (
    Selection,
    fit_reasons,
    pareto_front,
    registry_aliases,
    select_per_tier,
    select_variant,
    tier_alias,
)
from tightfit.select.plot import pareto_plot
from tightfit.select.report import write_report

__all__ = [
    "Selection",
    "fit_reasons",
    "pareto_front",
    "pareto_plot",
    "registry_aliases",
    "select_per_tier",
    "select_variant",
    "tier_alias",
    "write_report",
]
