"""KFP component ``start_tracking``: open the MLflow parent run that every variant's nested run hangs under."""

from kfp import dsl
from kfp.dsl import Metrics, Output
from tightfit.components.image import TIGHTFIT_IMAGE


@dsl.component(base_image=TIGHTFIT_IMAGE, install_kfp_package=False)
def start_tracking(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    base_model: str,
    dataset: str,
    target: str,
    pipeline_run: str,
    stats: Output[Metrics],
) -> str:
    """Returns the parent run's handle (stable for ``pipeline_run``: every task derives the same one)."""
    from tightfit.components.steps import fail_task, log_stats, quiet
    from tightfit.components.tracking_steps import start_parent_run

    quiet()
    with fail_task("start_tracking"):
        run_id, figures = start_parent_run(
            tracking_uri, experiment, run_name, base_model, dataset, target, pipeline_run
        )
    log_stats(stats, figures)
    return run_id
