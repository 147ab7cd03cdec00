"""What one model input is, as a type: float images (N, C, H, W) or token ids (N, L) int64 in [0, vocab_size).

Every place that makes an input of its own (MAC counting, the ONNX export's example, ORT timing feeds,
calibration) asks the data's `ModelInput` for it instead of assuming float32, and a model factory gets the
input's own arguments (`model_options`: a text model's `vocab_size`). A plain shape tuple stands for a float input.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from lepton_ray.errors import ConfigError

if TYPE_CHECKING:
    from lepton_ray.config import WorkflowConfig


class ModelInput(ABC):
    """One model input: its per-sample shape, dtype, example batches and what a factory needs to know of it."""

    kind: ClassVar[str]
    dtype: ClassVar[str]
    """numpy/ONNX name of the element type."""
    quantized_ops: ClassVar[list[str] | None] = None
    """ONNX op types the int8 export quantizes (None: every type ORT's QDQ quantizer supports)."""
    shape: tuple[int, ...]

    @abstractmethod
    def example(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        """A fixed batch the model accepts (tracing, MAC counting)."""

    @abstractmethod
    def feed(self, batch_size: int) -> np.ndarray:
        """A seeded random batch for ONNX Runtime timing."""

    def model_options(self) -> dict[str, Any]:
        """Arguments a model factory takes from the input, besides its shape (none for images)."""
        return {}

    def cast(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch of this input in its own dtype (calibration samples, the logged example)."""
        return batch.to(getattr(torch, self.dtype))

    def check_workflow(self, wf: "WorkflowConfig") -> None:
        """Refuse, in one line, workflow settings that do not apply to this kind of input."""

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "shape": list(self.shape)}


@dataclass(frozen=True)
class FloatInput(ModelInput):
    """Normalised float32 images (N, C, H, W), or any float tensor of `shape` per sample."""

    shape: tuple[int, ...]
    kind: ClassVar[str] = "float"
    dtype: ClassVar[str] = "float32"

    def example(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        return torch.zeros((batch_size, *self.shape), device=device)

    def feed(self, batch_size: int) -> np.ndarray:
        return np.random.default_rng(0).standard_normal((batch_size, *self.shape), dtype=np.float32)


@dataclass(frozen=True)
class TokenInput(ModelInput):
    """Token ids (N, length) int64 in [0, vocab_size); id 0 pads."""

    length: int
    vocab_size: int
    kind: ClassVar[str] = "tokens"
    dtype: ClassVar[str] = "int64"
    quantized_ops: ClassVar[list[str] | None] = ["MatMul", "Gemm", "Gather"]
    """The projections, the attention products and the embedding table; LayerNorm, softmax and the masked mean
    stay float between them."""

    @property
    def shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (self.length,)

    def example(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return torch.randint(0, self.vocab_size, (batch_size, self.length), generator=generator).to(device)

    def feed(self, batch_size: int) -> np.ndarray:
        return np.random.default_rng(0).integers(0, self.vocab_size, (batch_size, self.length), dtype=np.int64)

    def model_options(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size}

    def check_workflow(self, wf: "WorkflowConfig") -> None:
        refused = [
            (wf.compression.channel_pruning.sparsity > 0, "compression.channel_pruning.sparsity",
             "structured channel pruning is for conv students; set it to 0 and use compression.pruning, quantization or low_rank"),
            (wf.teacher.train is not None and wf.teacher.train.augment is not None, "teacher.train.augment", "flips and crops do not apply to token ids; remove it"),
            (wf.training.channels_last is True, "training.channels_last", "channels_last is for conv weights; set it to false"),
        ]
        for failed, field, fix in refused:
            if failed:
                raise ConfigError(f"{field}: not for text data set {wf.data.name!r}; {fix}")

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "shape": [self.length], "vocab_size": self.vocab_size}


def as_model_input(value: ModelInput | tuple[int, ...] | list[int]) -> ModelInput:
    """A `ModelInput` as it is; a plain shape as a float input of that shape."""
    return value if isinstance(value, ModelInput) else FloatInput(tuple(int(size) for size in value))


_FROM_DICT = {
    FloatInput.kind: lambda facts: FloatInput(tuple(facts["shape"])),
    TokenInput.kind: lambda facts: TokenInput(int(facts["shape"][0]), int(facts["vocab_size"])),
}


def model_input_of(payload: dict[str, Any]) -> ModelInput:
    """The input a saved model file was trained on (`models.saved.model_payload`); files without the key take floats."""
    facts = payload.get("model_input")
    return as_model_input(payload["input_shape"]) if facts is None else _FROM_DICT[facts["kind"]](facts)
