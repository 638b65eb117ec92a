"""Models that load back from MLflow: a ``mlflow.pyfunc`` wrapper around a tightfit variant directory.

The variant directory (manifest + safetensors/state dict, or an ONNX graph) travels as the pyfunc model's
artifact and ``load_context`` calls ``tightfit.load_variant``, so quantized, pruned, bf16 and ONNX Runtime
variants all load through ``models:/name@alias`` with no pickled torch modules (MLflow 3.17's default
``pt2`` format fails on quantized modules and returns a GraphModule); predictions go through the variant's
runner, so an ONNX variant never imports torch. The wrapper class itself is stored by reference.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.pyfunc import PythonModel

from tightfit import names, settings
from tightfit.compress.variant import load_variant, read_manifest, runtime_of
from tightfit.errors import BackendError

PYFUNC_THREADS = 2
PROMPT_CAP = 2048  # generation prompts are not truncated in practice


class VariantPyfunc(PythonModel):
    """``predict(texts)`` -> label names (classifiers: the model config's ``id2label``, the dataset's names
    such as ``fresh``/``rotten``) or generated text (causal LMs)."""

    def load_context(self, context: Any) -> None:
        path = context.artifacts[names.PYFUNC_VARIANT_ARTIFACT]
        if runtime_of(read_manifest(path)) == names.RUNTIME_TORCH:
            import torch

            torch.set_num_threads(min(PYFUNC_THREADS, torch.get_num_threads()))
        self.variant = load_variant(path, device="cpu", threads=PYFUNC_THREADS)

    @staticmethod
    def _texts(model_input: Any) -> list[str]:
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            column = "text" if "text" in model_input.columns else model_input.columns[0]
            return [str(t) for t in model_input[column].tolist()]
        if isinstance(model_input, str):
            return [model_input]
        return [str(t) for t in list(model_input)]

    # No type hints on predict's inputs on purpose: MLflow would validate by them instead of the signature.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        import numpy as np

        texts = self._texts(model_input)
        params = params or {}
        max_length = int(params.get("max_length", 64))
        batch_size = int(params.get("batch_size", 32))
        runner = self.variant.runner
        if self.variant.kind != "classifier":
            max_new = int(params.get("max_new_tokens", 16))
            outputs = [runner.generate([text], max_new_tokens=max_new, max_length=PROMPT_CAP)[0]["text"] for text in texts]
            return np.array(outputs, dtype=object)

        # The same fixed-shape tokenization and batching as evaluation, so labels match the measured accuracy.
        logits = runner.classify_logits(texts, max_length=max_length, batch_size=batch_size)
        labels = runner.labels  # the dataset's label names (id2label), the same ones the serving API answers
        return np.array([labels[i] if i < len(labels) else str(i) for i in logits.argmax(axis=-1).tolist()],
                        dtype=object)


def _requirements() -> list[str]:
    reqs = []
    for dist in ("torch", "transformers", "torchao", "safetensors", "onnxruntime", "onnx", "tokenizers", "mlflow"):
        try:
            reqs.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    reqs.append("tightfit")
    return reqs


def save_pyfunc(variant_dir: str | Path, path: str | Path) -> Path:
    """Write a pyfunc model at ``path`` whose artifact is (a copy of) ``variant_dir``."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string")]),
        params=ParamSchema(
            [
                ParamSpec("max_length", "long", 64),
                ParamSpec("batch_size", "long", 32),
                ParamSpec("max_new_tokens", "long", 16),
            ]
        ),
    )
    out = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no input example" / type-hint notes: the signature is explicit
        mlflow.pyfunc.save_model(
            path=str(out),
            python_model=str(Path(__file__).with_name("pyfunc_code.py")),  # model from code: no pickle
            artifacts={names.PYFUNC_VARIANT_ARTIFACT: str(Path(variant_dir).resolve())},
            signature=signature,
            pip_requirements=_requirements(),  # explicit: inferring them would load the model in a subprocess
        )
    return out


def register_run_model(
    client: Any, run_id: str, model_name: str, aliases: list[str], artifact_path: str | None = None
) -> str:
    """Register the run's model (reusing an existing version of that run) and point ``aliases`` at it.

    The version's source is the variant's LoggedModel (``models:/<model_id>``, linked by ``model_id``) when
    the run has one, else the run's ``model/`` artifact (runs logged before LoggedModels)."""
    from mlflow.exceptions import MlflowException

    from tightfit.track.models import run_logged_model

    path = artifact_path or names.ARTIFACT_MODEL
    model_id = run_logged_model(client, run_id)
    if model_id is not None and not client.list_logged_model_artifacts(model_id):
        model_id = None  # a LoggedModel without its pyfunc (no variant dir was logged) cannot serve
    if model_id is None and not any(a.path == path for a in client.list_artifacts(run_id)):
        raise BackendError(
            f"run {run_id} has no '{path}' model artifact to register; log the variant with its variant_dir first"
        )
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description="tightfit variants; aliases name the chosen one per budget")
    existing = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    if existing:
        version = str(max(int(v.version) for v in existing))
    else:
        source = f"models:/{model_id}" if model_id else f"runs:/{run_id}/{path}"
        # A local registry store resolves ``models:/<id>`` through the process-wide tracking URI: point it
        # at this client's store for the call (a tracking server resolves it against its own store).
        with using_mlflow_uri(client.tracking_uri):
            created = client.create_model_version(model_name, source=source, run_id=run_id, model_id=model_id)
        version = str(created.version)
    for alias in aliases:
        client.set_registered_model_alias(model_name, alias, version)
    return version


def load_registered(
    model_name: str = names.DEFAULT_REGISTERED_MODEL,
    alias: str = names.ALIAS_CHAMPION,
    tracking_uri: str | None = None,
) -> Any:
    """Load ``models:/name@alias`` through ``mlflow.pyfunc`` (the variant comes back via ``load_variant``)."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    with using_mlflow_uri(settings.resolve_tracking_uri(tracking_uri)):
        return mlflow.pyfunc.load_model(names.model_uri(model_name, alias))


_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def using_mlflow_uri(uri: str) -> Iterator[None]:
    """MLflow's tracking and registry URIs set to ``uri`` for the block, then restored, environment included.

    ``mlflow.set_tracking_uri``/``set_registry_uri`` also export ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI``
    so that subprocesses inherit them; left behind, every pipeline task started later in this process would
    talk to that store (a stopped server, once). MLflow's own ``_use_tracking_uri`` leaves the variable set.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {key: os.environ.get(key) for key in _URI_ENV}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
