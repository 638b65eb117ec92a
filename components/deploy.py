"""KFP component ``deploy``: the Ray Serve plan and KubeRay RayService manifest for the chosen variant."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output
from tightfit.components.image import TIGHTFIT_IMAGE


@dsl.component(base_image=TIGHTFIT_IMAGE, install_kfp_package=False)
def deploy(
    chosen: Input[Model],
    selected: Input[Artifact],
    registered_model: str,
    alias: str,
    target: str,
    namespace: str,
    manifest: Output[Artifact],
    stats: Output[Metrics],
) -> str:
    """Writes ``plan.json`` and ``rayservice.yaml`` into ``manifest``; returns the plan summary.

    Inputs are artifacts and pipeline parameters only: inside ``dsl.If`` kfp.local mis-resolves an
    upstream task's output parameter (the selection travels as the ``selected`` artifact).
    """
    from tightfit.components.serve_steps import deploy_step
    from tightfit.components.steps import fail_task, log_stats, model_uri, quiet, read_text

    quiet()
    with fail_task("deploy"):
        summary, figures = deploy_step(
            chosen.path, read_text(selected.path), model_uri(registered_model, alias), target, namespace, manifest.path
        )
    log_stats(stats, figures)
    return summary
