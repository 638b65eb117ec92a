"""KFP component ``finetune``: the baseline fine-tune on Ray Train (local Ray, a Ray Jobs address, or KubeRay)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output
from tightfit.components.image import TIGHTFIT_IMAGE


@dsl.component(base_image=TIGHTFIT_IMAGE, install_kfp_package=False)
def finetune(
    data: Input[Dataset],
    base_model: str,
    kind: str,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    workers: int,
    cpus_per_worker: int,
    max_length: int,
    memory_budget: str,
    address: str,
    tracking_uri: str,
    experiment: str,
    model: Output[Model],
    stats: Output[Metrics],
):
    """Fine-tune ``base_model`` on the prepared splits; writes the HF-format model into ``model``.

    """
    from tightfit.components.steps import fail_task, finetune_step, log_stats, quiet

    quiet()
    with fail_task("finetune"):
        figures = finetune_step(
            data.path,
            model.path,
            base_model=base_model,
            kind=kind,
            seed=seed,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            workers=workers,
            cpus_per_worker=cpus_per_worker,
            max_length=max_length,
            memory_budget=memory_budget,
            address=address,
            tracking_uri=tracking_uri,
            experiment=experiment,
        )
    model.metadata.update({"base_model": base_model, "kind": kind})
    log_stats(stats, figures)
