"""KFP component ``profile_all``: the profile stage, every variant measured alone, one after another.

It runs after the whole sweep (it takes every variant the compression loop built), so no compression,
distillation or fine-tuning shares the cores while latencies are timed, on a cluster and on kfp.local alike.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output
from tightfit.components.image import TIGHTFIT_IMAGE


@dsl.component(base_image=TIGHTFIT_IMAGE, install_kfp_package=False)
def profile_all(
    baseline: Input[Model],
    variants: Input[list[Model]],
    data: Input[Dataset],
    seq_len: int,
    quick: bool,
    memory_subprocess: bool,
    tracking_uri: str,
    experiment: str,
    pipeline_run: str,
    metrics: Output[Metrics],
    footprints: Output[Artifact],
) -> list:
    """Returns the variants' Footprint records as JSON strings (the fan-in ``select`` reads); ``footprints``
    holds every record, the baseline's first, each with the window of its measurement."""
    import json
    from pathlib import Path

    from tightfit.components.profile_steps import profile_all_step
    from tightfit.components.steps import log_stats, quiet, record_json

    quiet()
    base, records, figures = profile_all_step(
        baseline.path, [v.path for v in variants], data.path, seq_len=seq_len, quick=quick,
        memory_subprocess=memory_subprocess, tracking_uri=tracking_uri, experiment=experiment,
        pipeline_run=pipeline_run,
    )
    log_stats(metrics, figures)
    Path(footprints.path).parent.mkdir(parents=True, exist_ok=True)
    Path(footprints.path).write_text(json.dumps([r.to_dict() for r in [base, *records]], default=str))
    return [record_json(r) for r in records]
