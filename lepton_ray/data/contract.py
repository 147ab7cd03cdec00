"""What a model trained on a data set expects as input and what its outputs mean, in one typed place.

Every data set in the registry fills a `DataContract`; the export writes it into the ONNX files and the
MLflow model version, so a deployer can turn raw inputs into the model's input without our code:

    input[n, c, h, w] = (raw[n, c, h, w] * scale - mean[c]) / std[c]     (float32, NCHW)

and `class_names[argmax(logits[n])]` is the prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

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
