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
    parent_run_id: str,
    registered_model: str,
    alias: str,
    stats: Output[Metrics],
) -> str:
    """Returns ``models:/NAME@ALIAS`` of the registered version."""
    from tightfit.components.steps import quiet, register_step

    quiet()
    uri, figures = register_step(selection, tracking_uri, experiment, parent_run_id, registered_model, alias)
    for key, value in figures.items():
        stats.log_metric(key, value)
    return uri
