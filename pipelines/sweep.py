"""The sweep every pipeline shares: save + profile the baseline (fp32), ParallelFor(compress -> profile), fan-in -> select.

Added to the pipeline being defined by calling ``add_sweep`` inside a ``@dsl.pipeline`` body, so
``compress_sweep`` and ``fit_for_serving`` run the very same tasks.
"""

from __future__ import annotations

from typing import Any

from kfp import dsl
from tightfit.components.compress import compress
from tightfit.components.prepare_data import prepare_data
from tightfit.components.profile import profile
from tightfit.components.select import select
from tightfit.components.start_tracking import start_tracking
from tightfit.pipelines.resources import TaskResources, apply_resources

from tightfit.config import PipelineConfig

LOOP_PARALLELISM = 2


def add_prelude(
    *,
    config: PipelineConfig,
    resources: dict[str, TaskResources],
    tracking_uri: Any,
    experiment: Any,
    run_name: Any,
    model: Any,
    dataset: Any,
    target: Any,
    pipeline_run: Any,
    seed: Any,
    data_limit: Any,
    validation: Any,
    test: Any,
) -> tuple[Any, Any]:
    """Add the tasks every pipeline starts with: the MLflow parent run and the data splits.

    Returns ``(start_tracking task, prepare_data task)``.
    """
    parent = start_tracking(
        tracking_uri=tracking_uri,
        experiment=experiment,
        run_name=run_name,
        base_model=model,
        dataset=dataset,
        target=target,
        pipeline_run=pipeline_run,
    )
    apply_resources(parent, resources["start_tracking"], config, mlflow=True)
    data = prepare_data(dataset=dataset, seed=seed, limit=data_limit, validation=validation, test=test)
    apply_resources(data, resources["prepare_data"], config)
    return parent, data


def add_sweep(
    *,
    config: PipelineConfig,
    resources: dict[str, TaskResources],
    baseline: Any,
    data: Any,
    variants: Any,
    seq_len: Any,
    quick: Any,
    memory_subprocess: Any,
    target: Any,
    tracking_uri: Any,
    experiment: Any,
    pipeline_run: Any,
    failed_variants: Any = "",
    after: Any = None,
) -> Any:
    """Add the sweep tasks; returns the ``select`` task (outputs chosen_variant, found, selection, chosen)."""
    # The reference every ratio is measured against: the baseline saved as an fp32 variant, profiled once.
    base_variant = compress(baseline=baseline, data=data, variant_name="baseline", chain="fp32").set_display_name(
        "compress-baseline"
    )
    apply_resources(base_variant, resources["compress"], config)
    if after is not None:  # the parent run exists before any variant run is logged under it
        base_variant.after(after)
    base_profile = profile(
        variant=base_variant.outputs["variant"],
        data=data,
        variant_name="baseline",
        chain="fp32",
        seq_len=seq_len,
        quick=quick,
        memory_subprocess=memory_subprocess,
        tracking_uri=tracking_uri,
        experiment=experiment,
        pipeline_run="",
    ).set_display_name("profile-baseline")
    apply_resources(base_profile, resources["profile"], config)

    with dsl.ParallelFor(variants, parallelism=LOOP_PARALLELISM) as item:
        # A variant that fails fails its compress (or profile) task: kfp.local then skips the fan-in, and
        # ``tightfit run`` selects among the variants that succeeded in a second run served from the cache.
        built = compress(baseline=baseline, data=data, variant_name=item.variant, chain=item.chain)
        apply_resources(built, resources["compress"], config)
        measured = profile(
            variant=built.outputs["variant"],
            data=data,
            variant_name=item.variant,
            chain=item.chain,
            baseline=base_profile.outputs["footprint"],
            seq_len=seq_len,
            quick=quick,
            memory_subprocess=memory_subprocess,
            tracking_uri=tracking_uri,
            experiment=experiment,
            pipeline_run=pipeline_run,
        )
        apply_resources(measured, resources["profile"], config, mlflow=True)

    chosen = select(
        footprints=dsl.Collected(measured.outputs["Output"]),
        variants=dsl.Collected(built.outputs["variant"]),
        target=target,
        tracking_uri=tracking_uri,
        experiment=experiment,
        pipeline_run=pipeline_run,
        failed_variants=failed_variants,
    )
    apply_resources(chosen, resources["select"], config, mlflow=True)
    return chosen
