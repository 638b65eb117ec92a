"""KFP component ``import_model``: a built-in model name or local path -> an HF-format Model artifact."""

from kfp import dsl
from kfp.dsl import Metrics, Model, Output
from tightfit.components.image import TIGHTFIT_IMAGE


@dsl.component(base_image=TIGHTFIT_IMAGE, install_kfp_package=False)
def import_model(model_name: str, kind: str, model: Output[Model], stats: Output[Metrics]):
    """Save ``model_name`` (``minilm``, ``smollm2`` or a path) as the baseline of a sweep, without training."""
    from tightfit.components.steps import fail_task, import_model_step, log_stats, quiet

    quiet()
    with fail_task("import_model"):
        figures = import_model_step(model_name, kind, model.path)
    model.metadata.update({"base_model": model_name, "kind": kind})
    log_stats(stats, figures)
