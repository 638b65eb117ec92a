"""KFP component ``register``: put the chosen variant in the MLflow Model Registry under its aliases."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output
from tightfit.components.image import TIGHTFIT_IMAGE


@dsl.component(base_image=TIGHTFIT_IMAGE, install_kfp_package=False)
def register(
    chosen: Input[Model],
    selection: str,
    tracking_uri: str,
    experiment: str,
    pipeline_run: str,
    registered_model: str,
    alias: str,
    stats: Output[Metrics],
) -> str:
    """Returns ``models:/NAME@ALIAS`` of the registered version."""
    from tightfit.components.steps import fail_task, log_stats, quiet
    from tightfit.components.tracking_steps import register_step

    quiet()
    with fail_task("register"):
        uri, figures = register_step(selection, tracking_uri, experiment, pipeline_run, registered_model, alias)
    log_stats(stats, figures)
    return uri
