"""ONNX variants of the fine-tuned MiniLM fixture, built once per test session (ONNX export takes seconds).

- ``onnx``, ``onnx_int8_dynamic``, ``onnx_int8_static``: the fine-tuned fp32 model under each runtime step;
- ``student`` (torch) and ``student-int8`` (its ONNX int8 form): a structured 50 % + vocabulary-pruned student
  with a short distillation, so the ONNX export carries pruned heads per layer and the vocabulary id remap.

Cached under $TIGHTFIT_CACHE/test-models beside the fine-tuned fixture (file-locked), so reruns reuse them.
"""

from __future__ import annotations

import pytest

STUDENT_CHAIN = "prune_structured:heads=0.5,ffn=0.5,calib_batches=2|prune_vocab|distill:steps=6,batch_size=16"
ONNX_FIXTURE_VERSION = "v1"


@pytest.fixture(scope="session")
def rt_full():
    """The whole Rotten Tomatoes dataset (seed 0): its train split for calibration and vocabulary, its test
    split held out from the fine-tuned fixture (which trained on the first 3,200 train rows)."""
    from tightfit.data import load_dataset

    return load_dataset("rotten_tomatoes", seed=0)


@pytest.fixture(scope="session")
def onnx_variants(finetuned_minilm_dir, rt_full):
    """name -> variant dir: the fp32 torch fixture, its three ONNX runtime forms, a torch student and its
    ONNX int8 form (built from the student's directory, so both hold the very same weights)."""
    import fcntl

    from tightfit.compress import build_variant
    from tightfit.compress.variant import MANIFEST
    from tightfit.spec import VariantSpec

    root = finetuned_minilm_dir.parent / f"onnx-{ONNX_FIXTURE_VERSION}-{finetuned_minilm_dir.name}"
    root.mkdir(parents=True, exist_ok=True)
    specs = [(chain.split(":")[0], chain, finetuned_minilm_dir) for chain in
             ("onnx", "onnx_int8_dynamic", "onnx_int8_static:calib_batches=4")]
    specs += [("student", STUDENT_CHAIN, finetuned_minilm_dir), ("student-int8", "onnx_int8_dynamic", root / "student")]
    dirs = {"fp32": finetuned_minilm_dir}
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name, chain, base in specs:
            dirs[name] = root / name
            if not (dirs[name] / MANIFEST).exists():
                build_variant(base, VariantSpec.parse(chain, name=name), dirs[name], data=rt_full, progress=False)
    return dirs


@pytest.fixture(scope="session")
def smollm2_ort_int4_dir():
    """SmolLM2 exported with its KV cache and packed by ``onnx_int4:block_size=32`` (4-bit affine blocks on
    MatMulNBits, int8 head and embedding rows), built once and cached (file-locked) under
    $TIGHTFIT_CACHE/test-models."""
    import fcntl

    from tightfit.assets import cache_dir, smollm2_path
    from tightfit.compress import build_variant
    from tightfit.compress.variant import MANIFEST
    from tightfit.spec import VariantSpec

    target = cache_dir() / "test-models" / f"smollm2-ort-int4-{ONNX_FIXTURE_VERSION}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / MANIFEST).exists():
            spec = VariantSpec.parse("onnx_int4:block_size=32", name="ort-int4-g32")
            build_variant(smollm2_path(), spec, target, progress=False)
    return target
