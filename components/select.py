"""KFP component ``select``: Pareto front + HardwareTarget constraints -> the chosen variant and a report."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Model, Output
from tightfit.components.image import TIGHTFIT_IMAGE


@dsl.component(base_image=TIGHTFIT_IMAGE, install_kfp_package=False)
def select(
    footprints: list[str],
    variants: Input[list[Model]],
    target: str,
    tracking_uri: str,
    experiment: str,
    pipeline_run: str,
    chosen: Output[Model],
    report: Output[HTML],
    selected: Output[Artifact],
    stats: Output[Metrics],
    failed_variants: str = "",
) -> NamedTuple("Selected", [("chosen_variant", str), ("found", bool), ("selection", str)]):  # type: ignore[valid-type]
    """``target`` is a HardwareTarget as JSON. ``found`` is False when no variant fits (nothing to deploy).

    ``failed_variants`` (JSON ``{variant: {"chain": ..., "error": ...}}``) names variants an earlier run of
    this pipeline could not build or measure: they join the report and MLflow as failed records.
    """
    from collections import namedtuple

    from tightfit.components.steps import fail_task, log_stats, quiet, select_step

    quiet()
    with fail_task("select"):
        name, selection_json, figures = select_step(
            footprints, [v.path for v in variants], target, tracking_uri, experiment, pipeline_run, chosen.path,
            report.path, failed_variants,
        )
    chosen.metadata.update({"variant": name or ""})
    log_stats(stats, figures)
    with open(selected.path, "w") as handle:  # the selection as an artifact: tasks inside dsl.If read it
        handle.write(selection_json)
    Selected = namedtuple("Selected", ["chosen_variant", "found", "selection"])
    return Selected(name or "", name is not None, selection_json)
