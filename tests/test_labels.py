"""Label names travel from the dataset to every answer: a ``pos``/``neg`` file serves ``pos``/``neg``.

dataset (label values kept) -> a variant's model config (``id2label``) -> the serving replica's answers and
the MLflow pyfunc's predictions. A tiny BERT keeps it fast; Ray Train carries the same names
(``tests/test_train.py`` checks the built-in ``rotten``/``fresh``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tightfit.errors import ConfigError


@pytest.fixture(scope="module")
def posneg_variant(tiny_bert_dir, tmp_path_factory) -> tuple[Path, object]:
    from tightfit.compress import build_variant
    from tightfit.data import load_dataset
    from tightfit.spec import VariantSpec

    root = tmp_path_factory.mktemp("labels")
    rows = [{"text": f"review number {i} {'great' if i % 2 else 'awful'}", "label": "pos" if i % 2 else "neg"}
            for i in range(60)]
    pd.DataFrame(rows).to_csv(root / "posneg.csv", index=False)
    data = load_dataset(str(root / "posneg.csv"))
    out = build_variant(tiny_bert_dir, VariantSpec.parse("fp32", name="tiny"), root / "variant", data=data,
                        progress=False)
    return out, data


def test_a_pos_neg_dataset_names_the_variant_and_the_served_answers(posneg_variant) -> None:
    from transformers import AutoConfig

    from tightfit.serve.replica import classify, load_for_serving
    from tightfit.serve.schema import PlannedVariant

    variant_dir, data = posneg_variant
    assert data.label_names == ["neg", "pos"]
    assert AutoConfig.from_pretrained(variant_dir).id2label == {0: "neg", 1: "pos"}
    planned = PlannedVariant(
        name="tiny", kind="classifier", source=str(variant_dir), chain="fp32", weight_bytes=1, resident_bytes=1,
        max_batch_size=4, max_tokens=32, max_new_tokens=1, predicted_peak_bytes=1, activation_bytes=1,
        kv_cache_bytes=0,
    )
    loaded = load_for_serving(planned)
    answers = classify(loaded, ["great film", "awful film", "fine"])
    assert {a["label"] for a in answers} <= {"neg", "pos"}
    assert all(a["label"] == ["neg", "pos"][a["label_id"]] for a in answers)


def test_the_mlflow_pyfunc_predicts_label_names(posneg_variant, tmp_path) -> None:
    import mlflow

    from tightfit.track.flavor import save_pyfunc

    variant_dir, _ = posneg_variant
    model = mlflow.pyfunc.load_model(str(save_pyfunc(variant_dir, tmp_path / "pyfunc")))
    predicted = model.predict(["great film", "awful film"]).tolist()
    assert len(predicted) == 2 and set(predicted) <= {"neg", "pos"}


def test_a_dataset_with_more_labels_than_the_head_is_refused(tiny_bert_dir, tmp_path) -> None:
    from tightfit.compress import build_variant
    from tightfit.data import load_dataset
    from tightfit.spec import VariantSpec

    rows = [{"text": f"text {i}", "label": ["a", "b", "c"][i % 3]} for i in range(90)]
    pd.DataFrame(rows).to_csv(tmp_path / "abc.csv", index=False)
    data = load_dataset(str(tmp_path / "abc.csv"))
    assert data.label_names == ["a", "b", "c"]
    with pytest.raises(ConfigError, match="2 output labels but the dataset has 3"):
        build_variant(tiny_bert_dir, VariantSpec.parse("fp32"), tmp_path / "v", data=data, progress=False)
    assert not (tmp_path / "v").exists()
