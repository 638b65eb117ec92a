"""KFP component ``deploy``: the Ray Serve plan and KubeRay RayService manifest for the chosen variant."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output
from tightfit.components.image import TIGHTFIT_IMAGE


@dsl.component(base_image=TIGHTFIT_IMAGE, install_kfp_package=False)
def deploy(
    chosen: Input[Model],
    selection: str,
    model_uri: str,
    target: str,
    namespace: str,
    manifest: Output[Artifact],
    stats: Output[Metrics],
) -> str:
    """Writes ``plan.json`` and ``rayservice.yaml`` into ``manifest``; returns the plan summary."""
    from tightfit.components.steps import deploy_step, log_stats, quiet

    quiet()
    summary, figures = deploy_step(chosen.path, selection, model_uri, target, namespace, manifest.path)
    log_stats(stats, figures)
    return summary
