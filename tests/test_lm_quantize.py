"""4-bit decoder LMs on CPU, on the real SmolLM2-135M: packing, round trips, kernel refusals, calibration, mixed.

Every quantized model is built once per module and shared; held-out quality is perplexity on 1,024 tokens
of the Rotten Tomatoes test split (8 disjoint 128-token windows), calibration reads the train split and
the mixed-precision probe the validation split, so nothing is judged on the text it was tuned on.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tightfit.compress import apply_chain, load_variant, save_variant
from tightfit.compress.lowbit.formats import LAYER_FORMATS, LAYER_REASONS, PACKED_MODULES
from tightfit.measure.lm import kv_cache_bytes_per_token, weight_bytes
from tightfit.measure.quality import stream_perplexity, token_stream
from tightfit.spec import VariantSpec

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def held_out(smollm2, rt_data):
    return token_stream(smollm2.tokenizer, rt_data.test["text"].tolist(), 1024)


_PPL: list[tuple[torch.nn.Module, float]] = []  # (model, perplexity): holding the model keeps its identity unique


def _ppl(model, ids) -> float:
    """Held-out perplexity (8 disjoint 128-token windows), once per model object."""
    for seen, value in _PPL:
        if seen is model:
            return value
    _PPL.append((model, stream_perplexity(model, ids, context=128, stride=128)))
    return _PPL[-1][1]


@pytest.fixture(scope="module")
def built(smollm2, rt_data):
    """chain -> (model, notes), each quantized once from a fresh copy of fp32 SmolLM2."""
    cache: dict[str, tuple] = {}

    def get(chain: str):
        if chain not in cache:
            spec = VariantSpec.parse(chain)
            cache[chain] = apply_chain(copy.deepcopy(smollm2.model), spec, kind="causal_lm",
                                       tokenizer=smollm2.tokenizer, data=rt_data)
        return cache[chain]

    return get


@pytest.fixture(scope="module")
def fp32_ppl(smollm2, held_out) -> float:
    return _ppl(smollm2.model, held_out)


def _greedy(model, tokenizer, new_tokens: int = 12):
    enc = tokenizer([PROMPT], return_tensors="pt")
    with torch.inference_mode():
        return model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)


def _linears(model) -> dict[str, torch.nn.Module]:
    """Every decoder-block Linear, packed or not (the output head excluded)."""
    kinds = (torch.nn.Linear, *PACKED_MODULES)
    return {n: m for n, m in model.named_modules()
            if n.startswith("model.layers.") and (isinstance(m, torch.nn.Linear) or type(m).__name__ in kinds)}


def _linear_bytes(model) -> int:
    return sum(weight_bytes(m) for m in _linears(model).values())


def test_int4_on_cpu_packs_every_linear_decodes_and_round_trips(smollm2, smollm2_int4_dir, held_out, fp32_ppl):
    variant = load_variant(smollm2_int4_dir)
    model, manifest = variant.model, variant.manifest
    formats = manifest["extra"][LAYER_FORMATS]
    body = _linears(model)
    assert len(body) == 30 * 7 and all(formats[name] == "int4:g32" for name in body)
    assert all(type(m).__name__ == "Int4Linear" for m in body.values())
    assert formats["lm_head"] == "bf16"  # the tied head stays bf16 (int8 with int8_embeddings)
    assert manifest["weights"]["format"] == "safetensors"  # plain buffers: no pickle, no torchao to load
    assert _linear_bytes(model) <= 0.3 * _linear_bytes(smollm2.model)
    assert weight_bytes(model) <= 0.3 * weight_bytes(smollm2.model)  # embeddings and head included
    # decodes to text, and the reloaded variant gives exactly the greedy tokens of a fresh quantization
    fresh, _ = apply_chain(copy.deepcopy(smollm2.model), VariantSpec.parse("int4_weight_only:group_size=32"),
                           kind="causal_lm")
    out = _greedy(model, variant.tokenizer)
    assert torch.equal(out, _greedy(fresh, smollm2.tokenizer))
    assert "Paris" in variant.tokenizer.decode(out[0])
    assert _ppl(model, held_out) <= 1.15 * fp32_ppl
    # the KV cache a forward leaves: 2 (K, V) x 30 layers x 3 KV heads x 64 dims x 2 bytes (bf16) per token
    assert kv_cache_bytes_per_token(model, variant.tokenizer, ["a review"]) == 2 * 30 * 3 * 64 * 2


def test_a_shape_the_int4_kernel_refuses_keeps_int8_and_the_manifest_says_so(smollm2, built, tmp_path):
    """group 128: SmolLM2's 576-wide inputs are no multiple of 128, so only down_proj (1536 wide) is int4."""
    spec = VariantSpec.parse("int4_weight_only:group_size=128")
    model, notes = built(spec.chain)
    out = save_variant(model, smollm2.tokenizer, tmp_path / "g128", spec, base_model="smollm2", kind="causal_lm",
                       extra=notes)
    loaded = load_variant(out)
    formats, reasons = loaded.manifest["extra"][LAYER_FORMATS], loaded.manifest["extra"][LAYER_REASONS]
    assert formats["model.layers.0.mlp.down_proj"] == "int4:g128"
    assert formats["model.layers.0.self_attn.q_proj"] == "int8"
    assert reasons["model.layers.0.self_attn.q_proj"] == "in_features 576 is not a multiple of group_size 128"
    assert sum(f == "int8" for f in formats.values()) == 30 * 6
    q_proj = loaded.model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "Int8Linear" and q_proj.qdata.dtype == torch.int8
    assert torch.equal(_greedy(loaded.model, loaded.tokenizer), _greedy(model, smollm2.tokenizer))


def test_calibrated_int4_beats_round_to_nearest_at_group_64(built, held_out, fp32_ppl):
    """At group 64 round-to-nearest loses a lot on SmolLM2; AWQ on two train-split chunks (and a coarse scale
    search, to keep the test cheap) wins much of it back."""
    rtn, _ = built("int4_weight_only:group_size=64")
    awq, notes = built("int4_awq:group_size=64,calib_chunks=2,search=4")
    assert notes["calibration"] == {"method": "awq", "split": "train", "chunks": 2, "tokens": 256, "search": 4}
    assert all(fmt == "int4:g64:awq" for name, fmt in notes[LAYER_FORMATS].items() if name != "lm_head")
    rtn_ppl, awq_ppl = _ppl(rtn, held_out), _ppl(awq, held_out)
    assert rtn_ppl > 1.1 * fp32_ppl, "group 64 RTN should be clearly worse than fp32 here"
    assert awq_ppl < rtn_ppl - 0.25 * (rtn_ppl - fp32_ppl), (fp32_ppl, rtn_ppl, awq_ppl)


def test_mixed_int4_sits_between_int4_and_int8_in_bytes_and_perplexity(built, held_out):
    rtn, _ = built("int4_weight_only:group_size=64")
    mixed, notes = built("mixed_int4:keep=0.2,group_size=64,probe_chunks=2")
    int8, _ = built("int8_weight_only")
    sensitivity = notes["sensitivity"]
    assert len(sensitivity) == 30 and notes["probe"]["split"] == "validation"
    kept = {name.rsplit(".", 2)[0] for name, fmt in notes[LAYER_FORMATS].items() if fmt == "int8"}
    ranked = sorted(sensitivity, key=sensitivity.get, reverse=True)
    assert kept == set(ranked[: len(kept)]) and 0 < len(kept) <= 6  # the most harmful blocks, a fifth at most
    assert _linear_bytes(rtn) < _linear_bytes(mixed) < _linear_bytes(int8)
    assert _ppl(int8, held_out) < _ppl(mixed, held_out) < _ppl(rtn, held_out)


def test_int8_tied_embedding_and_head_share_one_table_and_hold_quality(smollm2, built, held_out, tmp_path):
    base, base_notes = built("int4_weight_only:group_size=32")
    spec = VariantSpec.parse("int4_weight_only:group_size=32|int8_embeddings")
    model, head_notes = apply_chain(copy.deepcopy(base), VariantSpec.parse("int8_embeddings"), kind="causal_lm")
    notes = {**base_notes, LAYER_FORMATS: {**base_notes[LAYER_FORMATS], **head_notes[LAYER_FORMATS]}}
    assert notes[LAYER_FORMATS]["lm_head"] == notes[LAYER_FORMATS]["model.embed_tokens"] == "int8 (tied)"
    assert type(model.model.embed_tokens).__name__ == "Int8Embedding"
    assert model.lm_head.qdata is model.model.embed_tokens.qdata  # one int8 table serves both
    saved = weight_bytes(base) - weight_bytes(model)
    assert saved >= 0.45 * 49152 * 576 * 2  # half of the bf16 table's bytes
    assert _ppl(model, held_out) <= 1.01 * _ppl(base, held_out)
    out = save_variant(model, smollm2.tokenizer, tmp_path / "head", spec, base_model="smollm2", kind="causal_lm",
                       extra=notes)
    loaded = load_variant(out)
    head, table = loaded.model.lm_head.qdata, loaded.model.model.embed_tokens.qdata
    assert head.data_ptr() == table.data_ptr()  # still one table after the round trip
    assert torch.equal(_greedy(loaded.model, loaded.tokenizer), _greedy(model, smollm2.tokenizer))


@pytest.mark.parametrize("in_features", [24, 40, 32, 48])
@pytest.mark.parametrize("rows", [1, 4, 64])
def test_int8_linear_matches_float_at_any_width_and_row_count(in_features, rows):
    """PyTorch's row-wise int8 kernel needs an input width that is a multiple of 16 (at 24 or 40 it crashed
    the process or returned NaN); a structurally pruned layer of another width takes the dequantized GEMM,
    and every path matches the float layer it came from."""
    from tightfit.compress.lowbit.modules import Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(in_features, 32)
    packed = Int8Linear.from_float(linear)
    x = torch.randn(rows, in_features)
    with torch.inference_mode():
        got, want = packed(x).float(), linear(x)
    assert torch.isfinite(got).all()
    assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.99
