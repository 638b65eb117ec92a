"""Pipeline ``fit_for_serving`` (the default, what ``tightfit run`` runs).

prepare_data -> finetune (Ray Train) -> profile(baseline) -> ParallelFor(variants: compress -> profile)
-> select under the HardwareTarget -> register (MLflow alias) -> deploy, behind two nested ``dsl.If``:
deployment is on, and a variant fits.
"""

from typing import Any

from kfp import dsl
from tightfit.components.deploy import deploy
from tightfit.components.finetune import finetune
from tightfit.components.register import register
from tightfit.pipelines.resources import apply_resources, task_resources
from tightfit.pipelines.sweep import add_prelude, add_sweep

from tightfit.config import PipelineConfig, load_config

PIPELINE_NAME = "fit-for-serving"

def build_fit_for_serving(config: PipelineConfig) -> Any:
    """The ``fit_for_serving`` pipeline with defaults and resource requests from ``config``."""
    res = task_resources(config)
    ft = config.finetune

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Fine-tune on Ray, sweep compression variants, select under a hardware budget, register, deploy.",
    )
    def fit_for_serving(
        model: str = config.model,
        kind: str = config.kind,
        dataset: str = config.dataset,
        seed: int = config.seed,
        data_limit: int = config.data.limit or 0,
        validation: float = config.data.validation,
        test: float = config.data.test,
        max_length: int = config.data.max_length,
        epochs: int = ft.epochs,
        batch_size: int = ft.global_batch,
        lr: float = ft.lr,
        workers: int = ft.workers,
        cpus_per_worker: int = ft.cpus_per_worker,
        memory_budget: str = ft.memory_budget or "",
        ray_address: str = ft.address or "",
        variants: list = config.loop_items(),
        target: str = config.target_json(),
        seq_len: int = config.measure.seq_len,
        quick: bool = config.measure.quick,
        memory_subprocess: bool = config.measure.memory_subprocess,
        tracking_uri: str = "",
        pipeline_run: str = "",
        failed_variants: str = "",
        experiment: str = config.tracking.experiment,
        run_name: str = "fit-for-serving",
        registered_model: str = config.tracking.registered_model,
        alias: str = config.tracking.alias,
        deploy_enabled: bool = config.deploy.enabled,
        namespace: str = config.deploy.namespace,
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
        tuned = finetune(
            data=data.outputs["data"],
            base_model=model,
            kind=kind,
            seed=seed,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            workers=workers,
            cpus_per_worker=cpus_per_worker,
            max_length=max_length,
            memory_budget=memory_budget,
            address=ray_address,
            tracking_uri=tracking_uri,
            experiment=experiment,
        )
        apply_resources(tuned, res["finetune"], config, mlflow=True)
        chosen = add_sweep(
            config=config,
            resources=res,
            baseline=tuned.outputs["model"],
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
        # register runs always (a no-op when nothing fits); deploy runs when deployment is on and a variant
        # fits: two nested conditions (``with A, B`` nests B in A), the pipeline parameter outside. Keep them
        # nested: kfp.local resolves a condition on one field of select's NamedTuple output only where that
        # field enters a condition's sub-DAG as an input (a lone top-level dsl.If on it is never true
        # locally). Tasks inside dsl.If take only artifacts and pipeline parameters (kfp.local mis-resolves
        # an upstream task's output parameter there). KFP builds a condition from ``==``, hence the noqa.
        registered = register(
            chosen=chosen.outputs["chosen"],
            selection=chosen.outputs["selection"],
            tracking_uri=tracking_uri,
            experiment=experiment,
            pipeline_run=pipeline_run,
            registered_model=registered_model,
            alias=alias,
        )
        apply_resources(registered, res["register"], config, mlflow=True)
        with dsl.If(deploy_enabled == True), dsl.If(chosen.outputs["found"] == True):  # noqa: E712
            served = deploy(
                chosen=chosen.outputs["chosen"],
                selected=chosen.outputs["selected"],
                registered_model=registered_model,
                alias=alias,
                target=target,
                namespace=namespace,
            ).after(registered)
            apply_resources(served, res["deploy"], config)
        return chosen.outputs["selection"]

    return fit_for_serving

fit_for_serving = build_fit_for_serving(load_config())
