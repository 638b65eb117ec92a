"""KFP component ``compress``: one variant spec -> one variant directory (a Model artifact).

A spec that cannot be built leaves a failed record in the artifact instead of failing the task, so it
still reaches ``select`` (a failed loop branch would skip the fan-in) and the run reports it.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output
from tightfit.components.image import TIGHTFIT_IMAGE


@dsl.component(base_image=TIGHTFIT_IMAGE, install_kfp_package=False)
def compress(
    baseline: Input[Model],
    data: Input[Dataset],
    variant_name: str,
    chain: str,
    kind: str,
    variant: Output[Model],
    stats: Output[Metrics],
) -> str:
    """Apply ``chain`` (e.g. ``prune_structured:heads=0.5|distill|int8_dynamic``) to the baseline.

    Returns ``ok`` or ``failed: <reason>``.
    """
    from tightfit.components.steps import compress_step, log_stats, quiet

    quiet()
    failure, figures = compress_step(baseline.path, data.path, variant_name, chain, kind, variant.path)
    status = "ok" if failure is None else "failed"
    variant.metadata.update({"variant": variant_name, "chain": chain, "status": status})
    log_stats(stats, figures)
    if failure is not None:
        print(f"tightfit: variant {variant_name!r} ({chain}) failed to compress: {failure.error}")
        return f"failed: {failure.error}"
    return "ok"
