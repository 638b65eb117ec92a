"""KFP component ``prepare_data``: load a dataset offline and write deterministic train/validation/test splits."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output
from tightfit.components.image import TIGHTFIT_IMAGE


@dsl.component(base_image=TIGHTFIT_IMAGE, install_kfp_package=False)
def prepare_data(
    dataset: str,
    seed: int,
    limit: int,
    validation: float,
    test: float,
    data: Output[Dataset],
    stats: Output[Metrics],
):
    """Split ``dataset`` (built-in name or .csv/.jsonl path) by ``seed``; ``limit`` rows per split (0 = all)."""
    from tightfit.components.steps import fail_task, log_stats, prepare_data_step, quiet

    quiet()
    with fail_task("prepare_data"):
        figures = prepare_data_step(dataset, seed, limit, validation, test, data.path)
    data.metadata.update({"dataset": dataset, "seed": seed})
    log_stats(stats, figures)
