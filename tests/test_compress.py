"""Each compression method on the real MiniLM fine-tuned on Rotten Tomatoes (``finetuned_minilm_dir``)."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from tightfit.compress import apply_chain
from tightfit.compress.variant import load_variant, save_variant
from tightfit.errors import ConfigError, UnsupportedError
from tightfit.measure.profile import count_params, tensor_bytes
from tightfit.spec import VariantSpec

N_TEXTS = 48

if os.environ.get("TIGHTFIT_THREADS"):
    import torch as _torch

    _torch.set_num_threads(int(os.environ["TIGHTFIT_THREADS"]))


@pytest.fixture(scope="session")
def texts(rt_data):
    return rt_data.test["text"].tolist()[:N_TEXTS]


def _fresh(finetuned_minilm_dir):
    return load_variant(finetuned_minilm_dir)


def _logits(model, tokenizer, texts):
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    with torch.inference_mode():
        return model(**dict(enc)).logits.float()


def _cosine(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _linear_weight_bytes(model) -> int:
    return sum(
        tensor_bytes(m.weight) for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".encoder." in f".{n}."
    )


def _build_and_reload(finetuned_minilm_dir, chain, tmp_path, rt_data=None):
    """Apply ``chain`` to a fresh copy, save it, load it back; returns (in-memory model, loaded variant)."""
    base = _fresh(finetuned_minilm_dir)
    spec = VariantSpec.parse(chain)
    model, notes = apply_chain(base.model, spec, kind="classifier", tokenizer=base.tokenizer, data=rt_data)
    out = save_variant(model, base.tokenizer, tmp_path / spec.name, spec, base_model="minilm",
                       kind="classifier", parent=str(finetuned_minilm_dir), extra=notes)
    return model, load_variant(out)


@pytest.mark.parametrize("chain", ["int8_dynamic", "int8_weight_only", "int8_dynamic|int8_embeddings", "bf16"])
def test_quantized_variants_stay_close_and_round_trip(finetuned_minilm_dir, texts, tmp_path, chain):
    fp32 = _fresh(finetuned_minilm_dir)
    reference = _logits(fp32.model, fp32.tokenizer, texts)
    model, loaded = _build_and_reload(finetuned_minilm_dir, chain, tmp_path)
    quantized = _logits(model, fp32.tokenizer, texts)
    assert _cosine(reference, quantized) >= 0.99
    assert (reference.argmax(-1) == quantized.argmax(-1)).float().mean() >= 0.9
    assert torch.equal(_logits(loaded.model, loaded.tokenizer, texts), quantized)  # save -> load: identical
    # parameter count is unchanged; bytes drop as promised
    assert count_params(loaded.model)[0] == count_params(fp32.model)[0]
    ratio = _linear_weight_bytes(loaded.model) / _linear_weight_bytes(fp32.model)
    weights_file = loaded.path / loaded.manifest["weights"]["file"]
    fp32_file = fp32.path / fp32.manifest["weights"]["file"]
    if chain == "bf16":
        assert ratio == pytest.approx(0.5)
    else:
        assert 0.24 <= ratio <= 0.28  # int8 weights + per-row scales: about a quarter of fp32
    limit = 0.27 if "int8_embeddings" in chain else 0.66
    assert weights_file.stat().st_size <= limit * fp32_file.stat().st_size


def test_gpu_only_methods_are_clear_errors_on_cpu(finetuned_minilm_dir):
    base = _fresh(finetuned_minilm_dir)
    with pytest.raises(UnsupportedError, match="needs a GPU"):
        apply_chain(base.model, VariantSpec.parse("fp16"), kind="classifier", device="cpu")


def test_unstructured_pruning_halves_nonzeros_and_disk_bytes(finetuned_minilm_dir, texts, tmp_path):
    fp32 = _fresh(finetuned_minilm_dir)
    model, loaded = _build_and_reload(finetuned_minilm_dir, "prune_unstructured:sparsity=0.5", tmp_path)
    total, nonzero = count_params(loaded.model)
    prunable = sum(m.weight.numel() for n, m in fp32.model.named_modules()
                   if isinstance(m, torch.nn.Linear) and n != "classifier")
    assert total == count_params(fp32.model)[0]
    assert total - nonzero == pytest.approx(prunable / 2, rel=0.02)
    assert loaded.manifest["weights"]["sparse"], "pruned weights must be stored sparse"
    saved = (loaded.path / "model.safetensors").stat().st_size
    fp32_saved = (fp32.path / "model.safetensors").stat().st_size
    assert fp32_saved - saved >= 0.45 * prunable * 4  # values + 1-bit mask: nearly half the Linear bytes go
    assert torch.equal(_logits(loaded.model, loaded.tokenizer, texts), _logits(model, loaded.tokenizer, texts))


def test_structured_pruning_removes_half_the_prunable_weights(finetuned_minilm_dir, rt_data, texts, tmp_path):
    fp32 = _fresh(finetuned_minilm_dir)
    model, loaded = _build_and_reload(
        finetuned_minilm_dir, "prune_structured:heads=0.5,ffn=0.5,calib_batches=2", tmp_path, rt_data
    )

    def prunable(m):
        return sum(p.numel() for n, p in m.named_parameters() if ".encoder." in f".{n}" and p.dim() == 2)

    assert prunable(loaded.model) / prunable(fp32.model) == pytest.approx(0.5, abs=0.03)
    assert count_params(loaded.model)[0] < 0.8 * count_params(fp32.model)[0]
    shapes = loaded.manifest["layer_shapes"]
    assert shapes == [{"heads": 6, "ffn": 768}] * 6
    assert loaded.manifest["extra"]["importance"] == "taylor"
    assert torch.equal(_logits(loaded.model, loaded.tokenizer, texts), _logits(model, loaded.tokenizer, texts))


def test_global_structured_pruning_records_uneven_shapes(finetuned_minilm_dir, rt_data, texts, tmp_path):
    model, loaded = _build_and_reload(
        finetuned_minilm_dir, "prune_structured:heads=0.5,ffn=0.5,scope=global,calib_batches=1", tmp_path, rt_data
    )
    shapes = loaded.manifest["layer_shapes"]
    assert len({(s["heads"], s["ffn"]) for s in shapes}) > 1
    # the serving memory model reads the pruned widths (the config keeps the base's): the widest layer
    from tightfit.memory.serving import ArchInfo

    arch = ArchInfo.from_dir(tmp_path / loaded.manifest["name"])
    assert (arch.layers, arch.heads, arch.ffn) == (6, max(s["heads"] for s in shapes), max(s["ffn"] for s in shapes))
    assert arch.ffn < 1536 or arch.heads < 12
    assert torch.equal(_logits(loaded.model, loaded.tokenizer, texts), _logits(model, loaded.tokenizer, texts))


def test_drop_layers_then_distill_moves_student_towards_teacher(finetuned_minilm_dir, rt_data, texts):
    teacher = _fresh(finetuned_minilm_dir)
    student = _fresh(finetuned_minilm_dir)
    student_model, _ = apply_chain(student.model, VariantSpec.parse("drop_layers:keep_every=2"), kind="classifier")
    assert len(student_model.bert.encoder.layer) == 3
    t_logits = _logits(teacher.model, teacher.tokenizer, texts)

    def kl_to_teacher(model) -> float:
        s = torch.log_softmax(_logits(model, teacher.tokenizer, texts) / 2.0, -1)
        t = torch.log_softmax(t_logits / 2.0, -1)
        return float(torch.nn.functional.kl_div(s, t, reduction="batchmean", log_target=True))

    before = kl_to_teacher(student_model)
    distilled, _ = apply_chain(
        student_model, VariantSpec.parse("distill:steps=30,batch_size=16,lr=0.0002"), kind="classifier",
        tokenizer=teacher.tokenizer, data=rt_data, teacher=teacher.model,
    )
    assert kl_to_teacher(distilled) < 0.7 * before


def test_hidden_state_term_maps_student_layers_onto_the_layers_drop_layers_keeps():
    """A dropped-layer student starts aligned: layer j of a keep=n student is teacher layer map(j)."""
    from tightfit.compress.distill import teacher_layer_for
    from tightfit.compress.prune import DropLayersConfig, kept_layer_indices

    for n in range(1, 6):
        assert [teacher_layer_for(j, n, 6) for j in range(n)] == kept_layer_indices(6, DropLayersConfig(keep=n))
    assert [teacher_layer_for(j, 3, 6) for j in range(3)] == kept_layer_indices(6, DropLayersConfig(keep_every=2))
    assert [teacher_layer_for(j, 6, 6) for j in range(6)] == list(range(6))


def test_hidden_state_distillation_pulls_the_student_layers_towards_the_teacher(finetuned_minilm_dir, rt_data, texts):
    from tightfit.compress.distill import hidden_state_loss
    from tightfit.compress.training import tokenize_batch

    teacher = _fresh(finetuned_minilm_dir)
    student, _ = apply_chain(_fresh(finetuned_minilm_dir).model,
                             VariantSpec.parse("drop_layers:keep=4|prune_structured:heads=0.5,ffn=0.75,calib_batches=1"),
                             kind="classifier", tokenizer=teacher.tokenizer, data=rt_data)
    inputs = tokenize_batch(teacher.tokenizer, list(texts))

    def distance(model) -> float:
        with torch.no_grad():
            s = model(**inputs, output_hidden_states=True).hidden_states
            t = teacher.model(**inputs, output_hidden_states=True).hidden_states
        return float(hidden_state_loss(s, t, inputs["attention_mask"]))

    before = distance(student)
    assert before > 0.05, "pruning and dropping layers moved the student's layers away from the teacher's"

    def distilled(hidden: float) -> float:
        model, _ = apply_chain(
            copy.deepcopy(student), VariantSpec.parse(f"distill:steps=20,batch_size=16,lr=0.0002,hidden={hidden}"),
            kind="classifier", tokenizer=teacher.tokenizer, data=rt_data, teacher=teacher.model,
        )
        return distance(model)

    logits_only, with_states = distilled(0.0), distilled(1.0)
    assert with_states < 0.9 * before, (before, logits_only, with_states)
    assert with_states < 0.9 * logits_only, (before, logits_only, with_states)


def test_distill_without_teacher_or_data_is_a_clear_error(finetuned_minilm_dir):
    base = _fresh(finetuned_minilm_dir)
    with pytest.raises(ConfigError, match="distill needs a teacher"):
        apply_chain(base.model, VariantSpec.parse("distill:steps=1"), kind="classifier")


@pytest.mark.slow
def test_causal_lm_int8_perplexity_and_round_trip(rt_data, tmp_path):
    """SmolLM2-135M: int8 dynamic keeps perplexity within 10 % of fp32 and reloads to identical logits."""
    from tightfit.assets import load_model
    from tightfit.measure.quality import evaluate

    frame = rt_data.test.head(16)
    fp32 = load_model("smollm2")
    reference = evaluate(fp32.model, fp32.tokenizer, frame, "causal_lm", batch_size=8, max_length=48)
    spec = VariantSpec.parse("int8_dynamic")
    model, _ = apply_chain(fp32.model, spec, kind="causal_lm")
    out = save_variant(model, fp32.tokenizer, tmp_path / "lm", spec, base_model="smollm2", kind="causal_lm")
    loaded = load_variant(out)
    quantized = evaluate(loaded.model, loaded.tokenizer, frame, "causal_lm", batch_size=8, max_length=48)
    assert quantized["perplexity"] == pytest.approx(reference["perplexity"], rel=0.10)
    enc = fp32.tokenizer(["a fine film"], return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(loaded.model(**dict(enc)).logits, model(**dict(enc)).logits)


def test_vocab_pruning_keeps_corpus_tokens_exact_and_maps_the_rest_to_unk(finetuned_minilm_dir, rt_data, tmp_path):
    fp32 = _fresh(finetuned_minilm_dir)
    tok = fp32.tokenizer
    seen = rt_data.train["text"].tolist()[:N_TEXTS]
    model, loaded = _build_and_reload(finetuned_minilm_dir, "prune_vocab|int8_embeddings", tmp_path, rt_data)
    corpus_ids = {i for ids in tok(rt_data.train["text"].tolist())["input_ids"] for i in ids}
    rows = loaded.manifest["vocab_rows"]
    assert rows == len(corpus_ids | set(tok.all_special_ids)) < 0.5 * tok.vocab_size
    dim = fp32.model.config.hidden_size
    assert count_params(loaded.model)[0] == count_params(fp32.model)[0] - (tok.vocab_size - rows) * dim
    # the corpus's own texts give the fp32 answers (int8 embedding rows: close, same labels)
    reference = _logits(fp32.model, tok, seen)
    assert _cosine(reference, _logits(loaded.model, loaded.tokenizer, seen)) >= 0.99
    assert torch.equal(_logits(loaded.model, loaded.tokenizer, seen), _logits(model, tok, seen))  # round trip
    # a token the corpus never used reads the [UNK] row
    unused = next(i for i in range(1000, tok.vocab_size) if i not in corpus_ids)
    ids = torch.tensor([[tok.cls_token_id, unused, tok.sep_token_id]])
    as_unk = torch.tensor([[tok.cls_token_id, tok.unk_token_id, tok.sep_token_id]])
    with torch.inference_mode():
        assert torch.equal(loaded.model(input_ids=ids).logits, loaded.model(input_ids=as_unk).logits)
    fp32_file = fp32.path / fp32.manifest["weights"]["file"]
    assert (loaded.path / loaded.manifest["weights"]["file"]).stat().st_size < 0.9 * fp32_file.stat().st_size


def test_vocab_pruning_without_data_is_a_clear_error(finetuned_minilm_dir):
    base = _fresh(finetuned_minilm_dir)
    with pytest.raises(ConfigError, match="prune_vocab keeps the tokens the training data uses"):
        apply_chain(base.model, VariantSpec.parse("prune_vocab"), kind="classifier", tokenizer=base.tokenizer)
