"""KFP component ``compress``: one variant spec -> one variant directory (a Model artifact).

A spec that cannot be built fails the task with one line naming the variant and the cause, so KFP
neither caches it nor hands it downstream (``tightfit run`` reports it and selects among the others).
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
    variant: Output[Model],
    stats: Output[Metrics],
):
    """Apply ``chain`` (e.g. ``prune_structured:heads=0.5|distill|int8_dynamic``) to the baseline."""
    from tightfit.components.steps import compress_step, fail_task, log_stats, quiet

    quiet()
    with fail_task("compress", variant_name):
        figures = compress_step(baseline.path, data.path, variant_name, chain, variant.path)
    variant.metadata.update({"variant": variant_name, "chain": chain})
    log_stats(stats, figures)
