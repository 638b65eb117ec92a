"""Spec validation messages and a property test: random chains either apply cleanly or fail clearly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tightfit.compress import apply_chain, validate_chain
from tightfit.compress.registry import all_methods
from tightfit.errors import ConfigError, UnsupportedError
from tightfit.spec import VariantSpec


@pytest.mark.parametrize(
    ("chain", "kind", "message"),
    [
        ("int9_magic", "classifier", r"unknown compression method 'int9_magic'; known methods: .*int8_dynamic"),
        ("prune_unstructured:sparsity=1.5", "classifier", r"sparsity must be in \(0, 1\), got 1.5"),
        ("prune_unstructured:sparsity=0", "classifier", r"sparsity must be in \(0, 1\)"),
        ("int4_weight_only:group_size=100", "classifier", r"group_size must be one of 32, 64, 128, got 100"),
        ("int4_awq:calib_chunks=0", "causal_lm", r"calib_chunks must be in \[1, 1024\]"),
        ("int4_awq", "classifier", r"does not support classifier models \(it supports causal_lm\)"),
        ("mixed_int4:keep=1", "causal_lm", r"keep is the fraction of Linear weights kept int8"),
        ("int4_weight_only|int8_dynamic", "causal_lm", r"pick one Linear quantizer"),
        ("prune_structured:heads=1.0", "classifier", r"heads is the fraction to remove and must be in \[0, 1\)"),
        ("drop_layers:keep_every=1", "classifier", r"keep_every must be >= 2"),
        ("drop_layers:keep=4,keep_every=3", "classifier", r"drop_layers takes keep_every or keep, not both"),
        ("distill:alpha=2", "classifier", r"alpha weighs KD against CE"),
        ("distill:hidden=-1", "classifier", r"hidden weighs the hidden-state term and must be in \[0, 100\]"),
        ("prune_unstructured:amount=0.5", "classifier", r"has no parameter\(s\) \['amount'\]; its parameters: sparsity"),
        ("int8_dynamic|prune_structured", "classifier", r"cannot come after 'int8_dynamic' \(precision\)"),
        ("compile|int8_dynamic", "classifier", r"cannot come after 'compile' \(runtime\)"),
        ("prune_structured", "causal_lm", r"does not support causal_lm models \(it supports classifier\)"),
        ("int8_dynamic|int8_weight_only", "classifier", r"pick one Linear quantizer"),
        ("int8_weight_only|bf16", "classifier", r"cast \(bf16\) before quantizing"),
        ("int8_embeddings|int8_embeddings", "classifier", r"int8_embeddings appears twice"),
        ("compile:mode=turbo", "classifier", r"mode must be one of default"),
    ],
)
def test_bad_specs_get_clear_messages(chain, kind, message):
    with pytest.raises(ConfigError, match=message):
        validate_chain(VariantSpec.parse(chain), kind)


def test_gpu_only_method_on_cpu_is_unsupported():
    with pytest.raises(UnsupportedError, match="fp16 needs a GPU"):
        validate_chain(VariantSpec.parse("fp16"), "classifier", device="cpu")
    validate_chain(VariantSpec.parse("int4_weight_only:group_size=32"), "causal_lm", device="cpu")  # CPU too


def test_every_method_declares_family_devices_kinds_and_defaults():
    methods = all_methods()
    expected = {"bf16", "fp16", "int8_dynamic", "int8_weight_only", "int8_embeddings", "int4_weight_only", "int4_awq",
                "mixed_int4",
                "prune_unstructured", "prune_structured", "drop_layers", "distill", "compile"}
    assert expected <= set(methods)
    for info in methods.values():
        assert info.devices and info.kinds and info.description
        info.make_config({})  # defaults are valid


@pytest.fixture(scope="module")
def tiny_bert(minilm):
    """A 4-layer, 32-wide BERT classifier sharing MiniLM's tokenizer (cheap enough for many examples)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=64)
    config.num_labels = 2
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()


STEP_CHOICES = {
    "structure": ["prune_unstructured:sparsity=0.3", "prune_unstructured:sparsity=0.9",
                  "prune_structured:heads=0.5,ffn=0.5,calib_batches=1,batch_size=4",
                  "prune_structured:heads=0.25,ffn=0,scope=global,calib_batches=1,batch_size=4",
                  "drop_layers:keep_every=2", "drop_layers:keep_every=4", "drop_layers:keep=2", "prune_vocab", "prune_vocab:max_size=500"],
    "recovery": ["distill:steps=1,batch_size=4,max_length=16"],
    "precision": ["bf16", "int8_dynamic", "int8_weight_only", "int8_embeddings", "fp16", "int4_weight_only"],
    "runtime": ["compile"],
}
chains = st.tuples(
    st.lists(st.sampled_from(STEP_CHOICES["structure"]), max_size=2),
    st.lists(st.sampled_from(STEP_CHOICES["recovery"]), max_size=1),
    st.lists(st.sampled_from(STEP_CHOICES["precision"]), max_size=3),
    st.lists(st.sampled_from(STEP_CHOICES["runtime"]), max_size=1),
).map(lambda parts: "|".join(s for part in parts for s in part) or "fp32")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chain=chains)
def test_random_chains_apply_or_fail_clearly(tiny_bert, minilm, rt_data, chain):
    import copy

    spec = VariantSpec.parse(chain, name="property")
    try:
        validate_chain(spec, "classifier", device="cpu")
    except (ConfigError, UnsupportedError):
        return  # refused up front with a clear message: fine
    model = copy.deepcopy(tiny_bert)
    try:
        out, notes = apply_chain(model, spec, kind="classifier", tokenizer=minilm.tokenizer, data=rt_data,
                                 teacher=tiny_bert, device="cpu")
    except ConfigError as exc:  # e.g. a second drop_layers on a 1-layer model: still a clear message
        assert "keep_every=" in str(exc) or "keep=" in str(exc)
        return
    enc = minilm.tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = out(**dict(enc)).logits
    assert logits.shape == (2, 2)
    assert torch.isfinite(logits.float()).all()
    assert ("compile" in notes) == ("compile" in chain)


def test_drop_layers_keeps_n_layers_spread_evenly_ending_with_the_last(tiny_bert):
    """``keep=n`` keeps n layers (the last always); ``keep=3`` of 6 is the same student as ``keep_every=2``."""
    import copy

    from tightfit.compress.prune import DropLayersConfig, kept_layer_indices

    assert kept_layer_indices(6, DropLayersConfig(keep=4)) == [1, 2, 4, 5]
    assert kept_layer_indices(6, DropLayersConfig(keep=3)) == kept_layer_indices(6, DropLayersConfig()) == [1, 3, 5]
    assert kept_layer_indices(4, DropLayersConfig(keep=1)) == [3]
    with pytest.raises(ConfigError, match="keep=4 would keep all 4 layers"):
        kept_layer_indices(4, DropLayersConfig(keep=4))
    before = [layer.attention.self.query.weight.clone() for layer in tiny_bert.base_model.encoder.layer]
    out, _ = apply_chain(copy.deepcopy(tiny_bert), VariantSpec.parse("drop_layers:keep=3"), kind="classifier")
    kept = out.base_model.encoder.layer
    assert out.config.num_hidden_layers == len(kept) == 3
    for layer, index in zip(kept, kept_layer_indices(4, DropLayersConfig(keep=3)), strict=True):
        assert torch.equal(layer.attention.self.query.weight, before[index])
