"""Fine-tuning and distillation on Ray Train: ``FinetuneConfig`` -> ``run_finetune`` -> an HF model dir.

``run`` drives a run, ``loop`` is what every worker runs, ``ingest`` how the splits reach the workers (in
memory or Ray Data), ``support`` the driver-side MLflow callback and evaluation, ``launch`` the remote paths
(Ray Jobs API, KubeRay RayJob), ``stopping`` early stopping on validation.
"""

from tightfit.train.config import FinetuneConfig
from tightfit.train.launch import launch_kuberay, rayjob_for_finetune, submit_finetune
from tightfit.train.run import FinetuneResult, plan_training, run_finetune
from tightfit.train.stopping import EarlyStopping, describe_training

__all__ = [
    "EarlyStopping",
    "FinetuneConfig",
    "FinetuneResult",
    "describe_training",
    "launch_kuberay",
    "plan_training",
    "rayjob_for_finetune",
    "run_finetune",
    "submit_finetune",
]
