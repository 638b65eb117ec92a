"""Per-task CPU/memory requests from tightfit's memory models, and the cluster-only Kubernetes settings.

Requests are fixed when a pipeline is defined (KFP compiles them into the IR), from the config's model,
batch size and sequence length. kfp.local ignores them (it warns once per task, then runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tightfit.config import PipelineConfig

GIB = 2**30
# RSS of a component process before any model (python + torch + transformers + kfp executor).
PROCESS_BASE_BYTES = 600 * 2**20


@dataclass(frozen=True)
class TaskResources:
    """What one task asks the scheduler for (limits = requests x ``headroom``)."""

    cpu: float
    memory_bytes: int
    headroom: float = 1.5
    gpu: int = 0

    @staticmethod
    def _quantity(n_bytes: float) -> str:
        return f"{max(1, int(-(-n_bytes // 2**20)))}Mi"

    @property
    def memory_request(self) -> str:
        return self._quantity(self.memory_bytes)

    @property
    def memory_limit(self) -> str:
        return self._quantity(self.memory_bytes * self.headroom)

    @property
    def cpu_request(self) -> str:
        return f"{self.cpu:g}"

    @property
    def cpu_limit(self) -> str:
        return f"{self.cpu * self.headroom:g}"


def _arch(config: PipelineConfig) -> Any:
    """The model's shape from its config.json (no weights read); the built-in default when unreadable."""
    from tightfit.errors import TightfitError
    from tightfit.memory.serving import ArchInfo

    try:
        from tightfit.assets import resolve_model_path

        path, _ = resolve_model_path(config.model)
        model_dir = path.parent if path.is_file() else path
        return ArchInfo.from_config(json.loads((model_dir / "config.json").read_text()), kind=config.kind)
    except (TightfitError, OSError, ValueError):
        return ArchInfo.default_for(config.kind)


def _param_count(arch: Any) -> int:
    """Parameters of a BERT/llama-style model from its shape (embeddings + blocks + head)."""
    h, ffn = arch.hidden, arch.ffn
    block = 4 * h * h + 2 * h * ffn + 9 * h + ffn
    return int(arch.vocab * h + 514 * h + arch.layers * block + h * h + h * (arch.num_labels + 1))


def task_resources(config: PipelineConfig) -> dict[str, TaskResources]:
    """Requests for every component of the pipelines, sized by the training and serving memory models."""
    from tightfit.memory.serving import ServingMemoryModel
    from tightfit.memory.training import ModelShape, estimate_training_memory

    arch = _arch(config)
    params = _param_count(arch)
    weight_bytes = params * 4
    seq_len = config.data.max_length
    shape = ModelShape(params=params, hidden=arch.hidden, layers=arch.layers, heads=arch.heads, vocab=arch.vocab)
    ft = config.finetune
    train_peak = estimate_training_memory(
        shape, micro_batch=ft.global_batch, seq_len=seq_len, workers=ft.workers
    ).total
    serve_b32 = ServingMemoryModel().predict(weight_bytes, arch, batch=32, seq_len=seq_len).total
    gpu = 1 if config.resources.gpu else 0
    # Compress holds teacher + student and may run a distillation fine-tune of the student.
    compress_peak = train_peak + weight_bytes * 2
    return {
        "start_tracking": TaskResources(cpu=0.5, memory_bytes=512 * 2**20),
        "prepare_data": TaskResources(cpu=1, memory_bytes=GIB),
        "import_model": TaskResources(cpu=1, memory_bytes=PROCESS_BASE_BYTES + 3 * weight_bytes),
        # The finetune task is the Ray driver; with a local Ray the workers live in the same pod.
        "finetune": TaskResources(
            cpu=ft.workers * ft.cpus_per_worker, memory_bytes=PROCESS_BASE_BYTES + ft.workers * train_peak, gpu=gpu
        ),
        "compress": TaskResources(cpu=2, memory_bytes=PROCESS_BASE_BYTES + compress_peak, gpu=gpu),
        # The profiler measures peak RSS in a fresh subprocess beside its own process.
        "profile": TaskResources(cpu=2, memory_bytes=PROCESS_BASE_BYTES + 2 * serve_b32, gpu=gpu),
        "select": TaskResources(cpu=1, memory_bytes=GIB),
        "register": TaskResources(cpu=1, memory_bytes=PROCESS_BASE_BYTES + 2 * weight_bytes),
        "deploy": TaskResources(cpu=0.5, memory_bytes=GIB),
    }


def apply_resources(task: Any, resources: TaskResources, config: PipelineConfig, *, mlflow: bool = False) -> Any:
    """Set CPU/memory (and GPU) requests and limits, and the cluster-only Kubernetes settings."""
    task.set_cpu_request(resources.cpu_request).set_cpu_limit(resources.cpu_limit)
    task.set_memory_request(resources.memory_request).set_memory_limit(resources.memory_limit)
    if resources.gpu:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(resources.gpu)
    _kubernetes(task, config, mlflow=mlflow)
    return task


def _kubernetes(task: Any, config: PipelineConfig, *, mlflow: bool) -> None:
    """kfp-kubernetes settings: MLflow credentials from a Secret, a data PVC, tolerations (IR only)."""
    from kfp import kubernetes

    res = config.resources
    if mlflow and res.mlflow_secret:
        kubernetes.use_secret_as_env(
            task,
            secret_name=res.mlflow_secret,
            secret_key_to_env={
                "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
                "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
            },
            optional=True,
        )
    if res.pvc:
        kubernetes.mount_pvc(task, pvc_name=res.pvc, mount_path=res.pvc_mount)
    for toleration in res.tolerations:
        kubernetes.add_toleration(
            task,
            key=toleration.get("key"),
            operator=toleration.get("operator", "Equal"),  # type: ignore[arg-type]
            value=toleration.get("value"),
            effect=toleration.get("effect"),  # type: ignore[arg-type]
        )
