"""Model and data fixtures shared by the test modules (session-scoped; loaded once)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def rt_data():
    """Rotten Tomatoes splits, capped for speed (the real data, deterministic by seed)."""
    from tightfit.data import load_dataset

    return load_dataset("rotten_tomatoes", seed=0, limit=512)


@pytest.fixture(scope="session")
def minilm():
    """The packaged all-MiniLM-L6-v2 as a 2-label classifier (untrained head)."""
    from tightfit.assets import load_model

    return load_model("minilm")


FINETUNED_MINILM_VERSION = "v2-rt3200-s120-b16-frozen-emb"


def _finetuned_minilm(root, version: str, train_rows: int, steps: int):
    """Fine-tune MiniLM on a Rotten Tomatoes slice once and cache the fp32 variant dir (file-locked)."""
    import fcntl
    import os
    from pathlib import Path

    from tightfit.assets import cache_dir
    from tightfit.compress.variant import MANIFEST

    target = Path(root or cache_dir() / "test-models") / f"minilm-rt-{version}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / MANIFEST).exists():
            import torch

            from tightfit.assets import load_model
            from tightfit.compress import quick_finetune
            from tightfit.compress.variant import save_variant
            from tightfit.data import load_dataset
            from tightfit.spec import VariantSpec

            torch.set_num_threads(int(os.environ.get("TIGHTFIT_THREADS", "1")))
            torch.manual_seed(0)
            data = load_dataset("rotten_tomatoes", seed=0)
            loaded = load_model("minilm")
            model = quick_finetune(
                loaded.model, loaded.tokenizer, data.train.head(train_rows), steps=steps, batch_size=16,
                lr=1.5e-4, seed=0, freeze_embeddings=True,
            )
            save_variant(
                model, loaded.tokenizer, target, VariantSpec.parse("fp32"), base_model="minilm",
                kind="classifier", extra={"finetune": {"rows": train_rows, "steps": steps, "dataset": "rotten_tomatoes"}},
            )
    return target


@pytest.fixture(scope="session")
def finetuned_minilm_dir():
    """MiniLM fine-tuned 120 steps (batch 16, embeddings frozen) on 3,200 Rotten Tomatoes training rows, saved
    as an fp32 variant dir. Cached under $TIGHTFIT_CACHE/test-models, so reruns reuse it (the first build takes
    a minute or two on an idle 2-core machine; one torch thread, since oversubscribed threads crawl).
    Its test accuracy is well above the majority class (about 0.58).
    """
    return _finetuned_minilm(None, FINETUNED_MINILM_VERSION, train_rows=3200, steps=120)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A tiny, untrained BERT classifier (1 layer, width 32) built from MiniLM's config and tokenizer, saved as
    an HF dir: loads in well under a second, for tests of paths, labels and serving plumbing, not accuracy."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from tightfit.assets import minilm_path

    source = minilm_path()
    config = AutoConfig.from_pretrained(source, num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                        intermediate_size=64, num_labels=2)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-bert")
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


# --- decoder LMs (issue 13): SmolLM2 once per session, and its int4 variant built once and cached ------------
SMOLLM2_INT4_VERSION = "v2-g32-modules"


@pytest.fixture(scope="session")
def smollm2():
    """The packaged SmolLM2-135M-Instruct (fp32, eval mode) with its tokenizer."""
    from tightfit.assets import load_model

    return load_model("smollm2")


@pytest.fixture(scope="session")
def smollm2_int4_dir(smollm2):
    """SmolLM2 as an ``int4_weight_only:group_size=32`` variant dir, built once and cached (file-locked)
    under $TIGHTFIT_CACHE/test-models like the MiniLM fixture; the LM and serving tests share it."""
    import copy
    import fcntl

    from tightfit.assets import cache_dir
    from tightfit.compress.variant import MANIFEST

    target = cache_dir() / "test-models" / f"smollm2-int4-{SMOLLM2_INT4_VERSION}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / MANIFEST).exists():
            from tightfit.compress import apply_chain, save_variant
            from tightfit.spec import VariantSpec

            spec = VariantSpec.parse("int4_weight_only:group_size=32", name="int4-g32")
            model, notes = apply_chain(copy.deepcopy(smollm2.model), spec, kind="causal_lm")
            save_variant(model, smollm2.tokenizer, target, spec, base_model="smollm2", kind="causal_lm", extra=notes)
    return target
