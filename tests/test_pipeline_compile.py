"""Every pipeline compiles to KFP IR YAML that kfp's own loader reads back, with resources on every task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tightfit.commands.pipeline import PIPELINE_NAMES, compile_pipeline, parse_params, submit_pipeline
from tightfit.config import load_config
from tightfit.errors import BackendError, ConfigError


def _docs(path: Path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_pipeline_compiles_and_loads_back(name: str, tmp_path: Path) -> None:
    from kfp import components

    out = compile_pipeline(name, tmp_path / f"{name}.yaml")
    loaded = components.load_component_from_file(str(out))
    assert loaded.name == name.replace("_", "-")
    spec, platform = _docs(out)
    executors = spec["deploymentSpec"]["executors"]
    from tightfit.components.image import TIGHTFIT_IMAGE

    for exec_name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == TIGHTFIT_IMAGE, exec_name
        resources = container["resources"]
        for key in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
            assert key in resources, (exec_name, key)
        assert float(resources["memoryLimit"]) >= float(resources["memoryRequest"]) > 0
    # The memory model sizes the tasks: compress (teacher + student + training) needs more than select.
    compress_mem = executors["exec-compress"]["container"]["resources"]["memoryRequest"]
    assert compress_mem > executors["exec-select"]["container"]["resources"]["memoryRequest"]
    # kfp-kubernetes: MLflow credentials come from a Secret on the tasks that log.
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-select"]["secretAsEnv"][0]["secretName"] == "tightfit-mlflow"
    # The variant loop fans out in parallel and fans in to select.
    dag = json.dumps(spec["root"])
    assert "parameterIterator" in dag or "iterator" in dag


def test_fit_for_serving_structure_and_finetune_resources(tmp_path: Path) -> None:
    out = compile_pipeline("fit_for_serving", tmp_path / "ffs.yaml", quick=True)
    spec, _ = _docs(out)
    executors = spec["deploymentSpec"]["executors"]
    assert {"exec-prepare-data", "exec-finetune", "exec-compress", "exec-profile", "exec-select",
            "exec-register", "exec-deploy"} <= set(executors)
    # deploy sits behind two nested conditions, no flag task: deployment on (a pipeline parameter), then
    # select's ``found`` output.
    assert not any("should-deploy" in name for name in executors)
    outer = [t for t in spec["root"]["dag"]["tasks"].values() if "triggerPolicy" in t]
    assert [t["triggerPolicy"]["condition"] for t in outer] == [
        "inputs.parameter_values['pipelinechannel--deploy_enabled'] == true"
    ]
    inner = spec["components"][outer[0]["componentRef"]["name"]]["dag"]["tasks"]
    (gate,) = inner.values()
    assert gate["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--select-found'] == true"
    assert list(spec["components"][gate["componentRef"]["name"]]["dag"]["tasks"]) == ["deploy"]
    # A failed variant fails its task; no task runs on upstream failure (kfp.local cannot fan in after one).
    assert "ALL_UPSTREAM_TASKS_COMPLETED" not in out.read_text()
    quick = load_config(profile="quick")
    finetune = executors["exec-finetune"]["container"]["resources"]
    assert float(finetune["cpuRequest"]) == quick.finetune.workers * quick.finetune.cpus_per_worker
    # The quick profile's variant set is the loop's default.
    defaults = spec["root"]["inputDefinitions"]["parameters"]["variants"]["defaultValue"]
    assert [v["variant"] for v in defaults] == [v.variant for v in quick.variants]


def test_kubernetes_settings_compile_into_the_ir(tmp_path: Path) -> None:
    from tightfit.pipelines.compress_sweep import build_compress_sweep

    from tightfit.config import config_from_dict

    raw = yaml.safe_load(load_config.__globals__["DEFAULT_CONFIG"].read_text())
    raw["resources"] = {
        "mlflow_secret": "mlflow-creds",
        "pvc": "tightfit-data",
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        "gpu": True,
    }
    config = config_from_dict(raw, profile="quick")
    from kfp import compiler

    out = tmp_path / "k8s.yaml"
    compiler.Compiler().compile(build_compress_sweep(config), str(out))
    spec, platform = _docs(out)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-compress"]["pvcMount"][0]["mountPath"] == "/data"
    assert k8s["exec-compress"]["tolerations"][0]["key"] == "dedicated"
    assert k8s["exec-select"]["secretAsEnv"][0]["secretName"] == "mlflow-creds"
    accel = spec["deploymentSpec"]["executors"]["exec-compress"]["container"]["resources"]["accelerator"]
    assert accel["resourceType"] == "nvidia.com/gpu" or accel.get("type") == "nvidia.com/gpu"


def test_cli_compile_and_unknown_pipeline(tmp_path: Path) -> None:
    from tightfit.cli import app

    out = tmp_path / "cs.yaml"
    result = CliRunner().invoke(app, ["compile", "compress_sweep", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and "compress-sweep" in out.read_text()
    with pytest.raises(ConfigError, match="unknown pipeline 'nope'"):
        compile_pipeline("nope", tmp_path / "x.yaml")


def test_submit_to_unreachable_host_is_a_clear_backend_error(tmp_path: Path) -> None:
    out = compile_pipeline("compress_sweep", tmp_path / "cs.yaml")
    with pytest.raises(BackendError, match=r"cannot reach the KFP API at http://127.0.0.1:9"):
        submit_pipeline(out, host="http://127.0.0.1:9", experiment="e", params={})
    with pytest.raises(ConfigError, match="does not exist"):
        submit_pipeline(tmp_path / "missing.yaml", host="http://127.0.0.1:9", experiment="e", params={})


def test_parse_params() -> None:
    assert parse_params(["epochs=2", "lr=0.001", "quick=true", "model=minilm", 'target={"memory_bytes": 5}']) == {
        "epochs": 2, "lr": 0.001, "quick": True, "model": "minilm", "target": '{"memory_bytes": 5}',
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_params(["epochs"])
