"""Pipeline ``compress_sweep``: one base model, every variant spec in parallel, the best variant that fits.

import_model -> profile(baseline) -> ParallelFor(variants: compress -> profile) -> select (fan-in).
No fine-tuning: the base model is swept as it is (use ``fit_for_serving`` for the whole path).
"""

from typing import Any

from kfp import dsl
from tightfit.components.import_model import import_model
from tightfit.pipelines.resources import apply_resources, task_resources
from tightfit.pipelines.sweep import add_prelude, add_sweep

from tightfit.config import PipelineConfig, load_config

PIPELINE_NAME = "compress-sweep"

def build_compress_sweep(config: PipelineConfig) -> Any:
    """The ``compress_sweep`` pipeline with defaults and resource requests from ``config``."""
    res = task_resources(config)

    @dsl.pipeline(name=PIPELINE_NAME, description="Compress a model into every variant spec, profile, select.")
    def compress_sweep(
        model: str = config.model,
        kind: str = config.kind,
        dataset: str = config.dataset,
        seed: int = config.seed,
        data_limit: int = config.data.limit or 0,
        validation: float = config.data.validation,
        test: float = config.data.test,
        variants: list = config.loop_items(),
        target: str = config.target_json(),
        seq_len: int = config.measure.seq_len,
        quick: bool = config.measure.quick,
        memory_subprocess: bool = config.measure.memory_subprocess,
        tracking_uri: str = "",
        pipeline_run: str = "",
        failed_variants: str = "",
        experiment: str = config.tracking.experiment,
        run_name: str = "compress-sweep",
    ) -> str:
        parent, data = add_prelude(
            config=config,
            resources=res,
            tracking_uri=tracking_uri,
            experiment=experiment,
            run_name=run_name,
            model=model,
            dataset=dataset,
            target=target,
            pipeline_run=pipeline_run,
            seed=seed,
            data_limit=data_limit,
            validation=validation,
            test=test,
        )
        base = import_model(model_name=model, kind=kind)
        apply_resources(base, res["import_model"], config)
        chosen = add_sweep(
            config=config,
            resources=res,
            baseline=base.outputs["model"],
            data=data.outputs["data"],
            variants=variants,
            seq_len=seq_len,
            quick=quick,
            memory_subprocess=memory_subprocess,
            target=target,
            tracking_uri=tracking_uri,
            experiment=experiment,
            pipeline_run=pipeline_run,
            failed_variants=failed_variants,
            after=parent,
        )
        return chosen.outputs["selection"]

    return compress_sweep

compress_sweep = build_compress_sweep(load_config())
