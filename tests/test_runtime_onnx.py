"""The ONNX Runtime steps on the real fine-tuned MiniLM: each exports, matches its torch variant, keeps its
accuracy on held-out reviews, round-trips through ``load_variant``, and loads without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tightfit.compress import apply_chain, load_variant, save_variant, validate_chain
from tightfit.errors import ConfigError, UnsupportedError
from tightfit.names import RUNTIME_ONNXRUNTIME
from tightfit.runtime import TextTokenizer
from tightfit.spec import VariantSpec

POINT = 0.01 + 1e-9  # one accuracy point (and float slack)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())


@pytest.fixture(scope="module")
def held_out(rt_full):
    """The whole test split (2,551 reviews, never seen by the fine-tuned fixture) and its labels. The short
    fixture leaves small margins, so int8 flips about 2 % of its answers, in both directions; on a slice of 800
    rows the net of those flips wanders past a point by chance (one CPU read 14 gained vs 3 lost there, 26 vs
    18 on the whole split), on 2,551 rows its spread is about a quarter of a point."""
    frame = rt_full.test
    return frame["text"].astype(str).tolist(), frame["label"].to_numpy()


@pytest.fixture(scope="module")
def torch_logits(onnx_variants, held_out):
    texts, _ = held_out
    return {"fp32": load_variant(onnx_variants["fp32"]).classify_logits(texts),
            "student": load_variant(onnx_variants["student"]).classify_logits(texts)}


@pytest.mark.parametrize(("name", "min_cosine"), [("onnx", 0.9999), ("onnx_int8_dynamic", 0.99),
                                                    ("onnx_int8_static", 0.99)])
def test_each_runtime_step_matches_the_torch_variant(onnx_variants, held_out, torch_logits, name, min_cosine):
    texts, labels = held_out
    variant = load_variant(onnx_variants[name])
    assert variant.runtime == RUNTIME_ONNXRUNTIME and variant.model is None
    manifest = variant.manifest
    assert manifest["weights"]["file"] == "model.onnx" and "model.onnx" in manifest["files"]
    assert manifest["rebuild_steps"] == [] and manifest["onnx"]["opset"] == 17
    logits = variant.classify_logits(texts)
    assert logits.shape == torch_logits["fp32"].shape
    assert _cosine(logits, torch_logits["fp32"]) >= min_cosine
    assert abs(_accuracy(logits, labels) - _accuracy(torch_logits["fp32"], labels)) <= POINT
    fused = manifest["onnx"]["fusion"]["fused"]
    if name != "onnx_int8_static":  # static int8 keeps attention unfused so its projections quantize
        assert fused.get("Attention") == 6, fused
    if "int8" in name:
        size = (onnx_variants[name] / "model.onnx").stat().st_size
        assert size < 0.7 * (onnx_variants["onnx"] / "model.onnx").stat().st_size


def test_pruned_distilled_student_exports_with_its_vocabulary_remap(onnx_variants, held_out, torch_logits):
    """prune_structured|prune_vocab|distill|onnx_int8_dynamic: pruned heads fuse layer by layer, the id remap
    of the pruned vocabulary is in the graph, and the student's predictions survive int8."""
    texts, labels = held_out
    student = load_variant(onnx_variants["student"])
    lean = load_variant(onnx_variants["student-int8"])
    shapes = student.manifest["layer_shapes"]
    assert [s["heads"] for s in shapes] == [6] * 6 and lean.manifest["layer_shapes"] == shapes
    assert lean.manifest["vocab_rows"] == student.manifest["vocab_rows"] < 30522
    # the memory model books the student's activations at its own widths, not its base config's
    from tightfit.memory.serving import ArchInfo

    arch = ArchInfo.from_dir(onnx_variants["student-int8"])
    assert (arch.heads, arch.ffn, arch.vocab) == (6, shapes[0]["ffn"], lean.manifest["vocab_rows"])
    assert lean.manifest["onnx"]["fusion"]["fused"].get("Attention") == 6
    logits = lean.classify_logits(texts)
    assert _cosine(logits, torch_logits["student"]) >= 0.99
    assert abs(_accuracy(logits, labels) - _accuracy(torch_logits["student"], labels)) <= POINT
    # a token the training split never used reads the [UNK] row, in the graph as in torch
    tok = student.tokenizer
    remap = student.model.base_model.embeddings.word_embeddings.id_map
    unseen = next(i for i in range(1000, 30522) if int(remap[i]) == int(remap[tok.unk_token_id]) and i != tok.unk_token_id)
    enc = lean.runner.encode(["a film about nothing much"], max_length=16)
    swapped = enc["input_ids"].copy()
    swapped[0, 2] = unseen
    unk = enc["input_ids"].copy()
    unk[0, 2] = tok.unk_token_id
    assert np.array_equal(lean.runner.forward(swapped, enc["attention_mask"]), lean.runner.forward(unk, enc["attention_mask"]))


def test_round_trip_through_load_variant_is_identical(finetuned_minilm_dir, held_out, tmp_path):
    """The graph a runtime step returns and the saved-and-loaded variant give bit-identical logits; the
    ``tokenizers`` tokenizer gives the transformers tokenizer's ids."""
    from tightfit.runtime import OrtRunner

    texts = held_out[0][:64]
    base = load_variant(finetuned_minilm_dir)
    spec = VariantSpec.parse("onnx:fuse=false", name="round-trip")  # fusions are tested above
    export, _notes = apply_chain(base.model, spec, kind="classifier", tokenizer=base.tokenizer)
    fresh = OrtRunner(export.onnx_path, TextTokenizer(finetuned_minilm_dir), kind="classifier", labels=["0", "1"],
                      threads=1).classify_logits(texts)
    out = save_variant(export, base.tokenizer, tmp_path / "v", spec, base_model="minilm", kind="classifier")
    loaded = load_variant(out, threads=1)
    assert np.array_equal(loaded.classify_logits(texts), fresh)
    assert np.array_equal(load_variant(out, threads=1).classify_logits(texts), fresh)
    for pad_to_max in (True, False):
        ours = loaded.runner.encode(texts, max_length=64, pad_to_max=pad_to_max)
        theirs = base.tokenizer(texts, padding="max_length" if pad_to_max else True, truncation=True, max_length=64,
                                return_tensors="np")
        for key in ("input_ids", "attention_mask"):
            assert np.array_equal(ours[key], theirs[key])
    assert loaded.runner.count_tokens(texts[0]) == len(base.tokenizer(texts[0])["input_ids"])


def test_an_onnx_variant_loads_and_answers_without_torch(onnx_variants, held_out):
    code = (
        "import json, sys\n"
        "from tightfit.compress.variant import load_variant\n"
        "v = load_variant(sys.argv[1], threads=1)\n"
        "out = v.runner.classify(json.loads(sys.argv[2]), max_length=64)\n"
        "print(json.dumps({'labels': [o['label_id'] for o in out], 'torch': 'torch' in sys.modules,\n"
        "                  'transformers': 'transformers' in sys.modules}))\n"
    )
    texts = held_out[0][:8]
    proc = subprocess.run([sys.executable, "-c", code, str(onnx_variants["onnx_int8_dynamic"]), json.dumps(texts)],
                          capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch"] is False and result["transformers"] is False
    here = load_variant(onnx_variants["onnx_int8_dynamic"]).classify_logits(texts).argmax(-1).tolist()
    assert result["labels"] == here


def test_memory_rounds_report_the_median_fresh_process_on_the_model_thread(onnx_variants):
    """Three fresh processes: each figure is the median of the three, the per-round peaks are kept, and the
    variant was loaded and served on the replica's model thread without importing torch."""
    from tightfit.measure.memory import measure_memory
    from tightfit.settings import MODEL_THREAD_PREFIX

    mem = measure_memory(onnx_variants["onnx_int8_dynamic"], batch=8, rounds=3, threads=1)
    assert mem["rounds"] == 3 and len(mem["rss_serve_bytes_rounds"]) == len(mem["rss_load_bytes_rounds"]) == 3
    assert mem["rss_serve_bytes"] == sorted(mem["rss_serve_bytes_rounds"])[1]
    assert mem["rss_load_bytes"] == sorted(mem["rss_load_bytes_rounds"])[1] <= mem["rss_serve_bytes"]
    assert mem["model_thread"].startswith(MODEL_THREAD_PREFIX) and mem["imported_torch"] is False


def test_chain_rules_for_runtime_steps():
    validate_chain(VariantSpec.parse("prune_structured:heads=0.5,ffn=0.5|prune_vocab|distill|onnx_int8_dynamic"))
    with pytest.raises(ConfigError, match="cannot be exported to ONNX"):
        validate_chain(VariantSpec.parse("int8_dynamic|onnx"))
    with pytest.raises(ConfigError, match="pick one runtime"):
        validate_chain(VariantSpec.parse("onnx|compile"))
    with pytest.raises(ConfigError, match="cannot come after"):
        validate_chain(VariantSpec.parse("onnx_int8_dynamic|prune_vocab"))
    with pytest.raises(ConfigError, match="does not support classifier"):
        validate_chain(VariantSpec.parse("onnx_int4"), kind="classifier")
    with pytest.raises(ConfigError, match="method must be one of"):
        validate_chain(VariantSpec.parse("onnx_int8_static:method=median"))


def test_an_unexportable_module_is_named():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from tightfit.compress.ort import check_exportable

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100)
    model = torch.ao.quantization.quantize_dynamic(BertForSequenceClassification(config).eval(), {torch.nn.Linear})
    with pytest.raises(UnsupportedError, match=r"'bert\.encoder\.layer\.0\.attention\.self\.query'.*onnx_int8_dynamic"):
        check_exportable(model)
    check_exportable(BertForSequenceClassification(config))  # the plain model exports


def test_without_a_cuda_provider_a_gpu_request_is_refused(onnx_variants):
    """This onnxruntime build (the CPU wheel here) has no CUDA provider: asking for the GPU is a clear error,
    never a silent CPU run."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    with pytest.raises(UnsupportedError, match="onnxruntime-gpu"):
        load_variant(onnx_variants["onnx_int8_dynamic"], device="cuda")


def test_onnx_variants_use_the_cuda_provider_where_a_gpu_is(onnx_variants, held_out):
    from tightfit.device import gpu_visible

    if not gpu_visible():
        pytest.skip("no GPU on this machine: the CUDA execution provider path runs where CUDA exists")
    texts = held_out[0][:64]
    gpu = load_variant(onnx_variants["onnx"], device="cuda")
    assert gpu.runner.providers[0] == "CUDAExecutionProvider" and gpu.runner.device.startswith("cuda")
    cpu = load_variant(onnx_variants["onnx"], device="cpu")
    assert _cosine(gpu.classify_logits(texts), cpu.classify_logits(texts)) >= 0.9999


def test_decoders_export_with_positions_and_pack_into_4_bits(tmp_path):
    """A small decoder of SmolLM2's architecture and tokenizer (2 layers, width 64): ``onnx`` reproduces the
    torch logits of a left-padded batch and its greedy continuations (decoded against the graph's KV cache);
    ``onnx_int4`` packs every projection into 4 bits and the embedding table into 8, keeps the logits close and is
    smaller on disk."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tightfit.assets import smollm2_path
    from tightfit.compress import build_variant
    from tightfit.compress.runtime import TorchRunner
    from tightfit.measure.quality import evaluate

    source = smollm2_path()
    config = AutoConfig.from_pretrained(source)
    for key, value in {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                       "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompts = ["The weather today is", "Once upon a time in a faraway land there lived"]
    frame = __import__("pandas").DataFrame({"text": prompts * 2})
    torch_ppl = evaluate(model, tokenizer, frame, "causal_lm", max_length=32)["perplexity"]  # right-padded
    tokenizer.padding_side = "left"
    reference = TorchRunner(model, tokenizer, kind="causal_lm")
    expected = reference.to_numpy(reference.forward(**reference.encode(prompts, max_length=32, pad_to_max=False)))
    sizes = {}
    for chain, min_cosine in (("onnx", 0.9999), ("onnx_int4", 0.98)):
        out = build_variant(tmp_path / "tiny", VariantSpec.parse(chain, name=chain), tmp_path / chain, progress=False)
        variant = load_variant(out, threads=1)
        assert variant.kind == "causal_lm" and variant.manifest["onnx"]["inputs"][-2:] == ["position_ids",
                                                                                         "logits_to_keep"]
        assert variant.manifest["onnx"]["kv_cache"] == {"layers": 2, "kv_heads": 2, "head_dim": 16}
        assert len(variant.runner.past) == 2 * 2  # the graph carries its KV cache: a key and a value per layer
        enc = variant.runner.encode(prompts, max_length=32, pad_to_max=False)
        assert enc["input_ids"][0, 0] == tokenizer.pad_token_id  # left-padded, like the torch replica
        logits = variant.runner.forward(**enc)
        real = enc["attention_mask"].astype(bool)
        assert _cosine(logits[real], expected[real]) >= min_cosine
        assert variant.runner.generate(prompts, max_new_tokens=4, max_length=32) == reference.generate(
            prompts, max_new_tokens=4, max_length=32)
        ppl = evaluate(None, None, frame, "causal_lm", max_length=32, runner=variant.runner)["perplexity"]
        assert ppl == pytest.approx(torch_ppl, rel=1e-3 if chain == "onnx" else 0.05)
        sizes[chain] = variant.manifest["files"]["model.onnx"]["bytes"]
    assert variant.manifest["onnx"]["matmuls_packed"] == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer + head
    assert variant.manifest["onnx"]["gathers_packed"] == 1  # the embedding table, int8 rows
    assert sizes["onnx_int4"] < 0.7 * sizes["onnx"]

    # profiled like a torch LM: generation speed, the cache's bytes, perplexity and the task, and the peak RSS
    # of a fresh serving process that never imports torch
    from tightfit.data import load_dataset
    from tightfit.measure import measure_variant

    fp = measure_variant(out, load_dataset("rotten_tomatoes", seed=0), quick=True)
    assert fp.runtime == RUNTIME_ONNXRUNTIME and fp.decode_tok_s_b1 > 0 and fp.decode_tok_s_b8 > 0 and fp.ttft_ms > 0
    assert fp.kv_cache_bytes_per_token == 2 * 2 * 2 * 16 * 4  # layers x (key, value) x kv heads x head dim x fp32
    assert fp.weight_bytes < sizes["onnx_int4"] and np.isfinite(fp.perplexity) and 0 <= fp.task_accuracy <= 1
    assert fp.peak_rss_serve_bytes > fp.extra["rss_imports_bytes"] > 0 and fp.extra["imported_torch"] is False


def test_an_onnx_variant_round_trips_through_an_mlflow_pyfunc_model(onnx_variants, held_out, tmp_path):
    import mlflow

    from tightfit.track.flavor import save_pyfunc

    texts = held_out[0][:40]
    path = save_pyfunc(onnx_variants["onnx_int8_dynamic"], tmp_path / "pyfunc")
    predicted = mlflow.pyfunc.load_model(str(path)).predict(texts, params={"batch_size": 16})
    variant = load_variant(onnx_variants["onnx_int8_dynamic"])
    expected = [variant.runner.labels[i] for i in variant.classify_logits(texts, batch_size=16).argmax(-1)]
    assert predicted.tolist() == expected  # the label names the serving API answers, not class ids
