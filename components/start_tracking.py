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
    stats: Output[Metrics],
) -> str:
    """Returns the parent run id (the pipeline run's MLflow run)."""
    from tightfit.components.steps import quiet, start_parent_run

    quiet()
    run_id, figures = start_parent_run(tracking_uri, experiment, run_name, base_model, dataset, target)
    for key, value in figures.items():
        stats.log_metric(key, value)
    return run_id
