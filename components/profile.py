"""KFP component ``profile``: measure a variant's footprint and quality, log it as an MLflow nested run."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output
from tightfit.components.image import TIGHTFIT_IMAGE


@dsl.component(base_image=TIGHTFIT_IMAGE, install_kfp_package=False)
def profile(
    variant: Input[Model],
    data: Input[Dataset],
    variant_name: str,
    chain: str,
    seq_len: int,
    quick: bool,
    memory_subprocess: bool,
    tracking_uri: str,
    experiment: str,
    pipeline_run: str,
    metrics: Output[Metrics],
    footprint: Output[Artifact],
    baseline: Input[Artifact] = None,
) -> str:
    """Returns the Footprint record as JSON. A measurement that cannot finish fails the task (one line
    naming the variant and the cause), never a record.

    ``baseline`` (the baseline's ``footprint``) fills the ratios; it travels as an artifact because
    kfp.local hands a loop task the loop item in place of an upstream task's output parameter.
    """
    from tightfit.components.steps import (
        fail_task,
        log_stats,
        profile_step,
        quiet,
        read_record,
        record_json,
        write_record,
    )
    from tightfit.components.tracking_steps import log_variant_run

    quiet()
    with fail_task("profile", variant_name):
        record, figures = profile_step(
            variant.path, data.path, variant_name, chain, read_record(baseline), seq_len, quick, memory_subprocess
        )
        run_id = log_variant_run(record, variant.path, tracking_uri, experiment, pipeline_run, data.path)
    log_stats(metrics, {**record.metrics(), **figures})
    metrics.metadata.update({"variant": variant_name, "status": record.status, "mlflow_run_id": run_id})
    write_record(footprint.path, record)
    return record_json(record)
