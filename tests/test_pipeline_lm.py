"""The packaged SmolLM2 config end to end with kfp.local: no fine-tune, a 4-bit variant (torch or ONNX Runtime)
chosen under a memory budget that the fp32 model cannot meet, registered, and a Serve plan that counts the KV
cache."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tightfit import names

pytestmark = pytest.mark.slow


def test_smollm2_quick_profile_chooses_a_4bit_variant_under_a_budget_fp32_cannot_meet(tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from tightfit.pipelines.local import run_local

    from tightfit.config import load_config
    from tightfit.memory.replica import replica_need_bytes

    config = load_config("smollm2", profile="quick")  # found by name among the packaged configs
    assert config.baseline == "pretrained" and config.kind == "causal_lm"
    summary = run_local(config, pipeline="fit_for_serving", run_dir=tmp_path / "runs")

    log = re.sub(r"\x1b\[[0-9;]*m", "", summary.log_file.read_text())
    assert "Executing task 'import-model'" in log and "'finetune'" not in log  # swept as it is
    records = {r.variant: r for r in summary.records}
    assert all(r.ok for r in records.values()), {k: r.error for k, r in records.items()}
    fp32, chosen = records["fp32"], records.get(summary.chosen or "")
    budget = config.target.memory_bytes
    fp32_need = replica_need_bytes(fp32)  # the replica the serving planner predicts, as selection judges it
    assert budget is not None and fp32_need is not None and fp32_need > budget
    assert any(why.startswith("memory") for why in summary.selection["reasons"]["fp32"])
    assert chosen is not None and "int4" in chosen.chain, summary.selection
    assert chosen.peak_rss_serve_bytes is not None and chosen.peak_rss_serve_bytes <= budget
    # LM figures measured on every variant: quality, generation speed, KV cache, 4-bit share
    for record in records.values():
        for metric in (names.PERPLEXITY, names.TASK_ACCURACY, names.TTFT_MS, names.DECODE_TOK_S_B1,
                       names.DECODE_TOK_S_B8, names.KV_CACHE_BYTES_PER_TOKEN, names.WEIGHT_BYTES):
            assert getattr(record, metric) is not None, (record.variant, metric)
    torch_int4, ort_int4 = records["int4-g32"], records["ort-int4-g32"]
    assert torch_int4.int4_weight_fraction is not None and torch_int4.int4_weight_fraction > 0.7
    assert torch_int4.extra["layer_formats"] == {"int4:g32": 210, "bf16": ["lm_head"]}
    # the same 4-bit blocks on ONNX Runtime: a serving process without torch, well under torch's int4 one
    assert ort_int4.runtime == names.RUNTIME_ONNXRUNTIME and ort_int4.extra["imported_torch"] is False
    assert ort_int4.peak_rss_serve_bytes is not None and torch_int4.peak_rss_serve_bytes is not None
    assert ort_int4.peak_rss_serve_bytes < 0.8 * torch_int4.peak_rss_serve_bytes
    for record in (chosen, torch_int4, ort_int4):
        assert record.perplexity is not None and fp32.perplexity is not None
        assert record.perplexity <= 1.15 * fp32.perplexity, record.variant

    # registered, with the per-variant figures in MLflow
    client = MlflowClient(summary.tracking_uri)
    version = client.get_model_version_by_alias(config.tracking.registered_model, config.tracking.alias)
    run = client.get_run(version.run_id)
    assert run.data.tags[names.TAG_VARIANT] == summary.chosen
    assert run.data.metrics[names.DECODE_TOK_S_B1] > 0 and run.data.tags[names.TAG_RUNTIME] == chosen.runtime
    torch_run = client.search_runs([run.info.experiment_id], f"tags.`{names.TAG_VARIANT}` = 'int4-g32'")[0]
    assert torch_run.data.metrics[names.INT4_WEIGHT_FRACTION] > 0.7
    assert "layer_formats" in json.loads(torch_run.data.tags[names.TAG_FOOTPRINT_EXTRA])

    # the Serve plan of the chosen variant counts its KV cache (bf16 in torch's int4, fp32 on ONNX Runtime)
    assert summary.deploy_plan is not None
    plan = json.loads(summary.deploy_plan.read_text())
    assert plan["deployed"], plan
    primary = plan["primary"]
    assert primary["kind"] == "causal_lm" and primary["kv_cache_bytes"] > 0
    assert plan["predicted_peak_bytes"] <= budget
