"""Typed compression configs (`compression:` of a workflow): pruning, channel pruning, QAT, low rank, and the per-layer
allocation that chooses bits and sparsity per layer. Kept apart from `config.py` only for size; `config.py` re-exports them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lepton_ray.config_base import StrictModel

class PruningConfig(StrictModel):
    """Global unstructured magnitude pruning on a cubic schedule (Zhu & Gupta, 2017)."""

    sparsity: float = Field(0.0, ge=0, le=0.95)
    start_epoch: int = Field(0, ge=0)
    end_epoch: int | None = Field(None, ge=0, description="default: two thirds of the epochs")
    per_layer: dict[str, float] = Field(
        default_factory=dict, description="layer name -> its own sparsity (smallest |w| within the layer); unnamed layers are not pruned. "
        "Set by compression.allocation, or by hand instead of 'sparsity'",
    )

    @field_validator("per_layer")
    @classmethod
    def _fractions(cls, value: dict[str, float]) -> dict[str, float]:
        if bad := {name: s for name, s in value.items() if not 0 <= s <= 0.95}:
            raise ValueError(f"every sparsity must be in [0, 0.95], got {bad}")
        return value

    @model_validator(mode="after")
    def _global_or_per_layer(self) -> "PruningConfig":
        if self.per_layer and self.sparsity:
            raise ValueError("per_layer cannot be set with sparsity (one global target); remove one of them")
        return self

    @property
    def active(self) -> bool:
        return self.sparsity > 0 or any(self.per_layer.values())


class ChannelPruningConfig(StrictModel):
    """Structured channel removal applied before distillation."""

    sparsity: float = Field(0.0, ge=0, le=0.9)


MAX_WEIGHT_BITS = 7
"""Widest weight grid offered: int8 weight codes past +-63 saturate ONNX Runtime's u8 x s8 kernels on x86
CPUs without VNNI (AVX2), so an 8-bit grid would ship a different model there (measured on an AVX2 EPYC:
a digits student at 8 bits 95.8% in its QDQ math, 90.6% through ORT's kernels; at 7 bits, identical)."""


FLOAT_WEIGHT_BITS = 32
"""Bits of a weight no quantization touches."""

LOW_BITS = (1, 2)
"""Binary ({-a, +a}) and ternary ({-a, 0, +a}) weights per output channel (`compress/quantize.py`)."""


WeightBitWidth = Literal[1, 2, 4, 5, 6, 7]


class QuantizationConfig(StrictModel):
    """b-bit weight / 8-bit activation fake-quant training (QAT); 2 bits is ternary, 1 bit binary."""

    bits: WeightBitWidth | None = None
    activation_bits: Literal[8] = 8
    per_layer: dict[str, WeightBitWidth] = Field(
        default_factory=dict, description="layer name -> its own weight bits; unnamed layers take 'bits' (float where bits is unset). "
        "Set by compression.allocation, or by hand",
    )
    start_epoch: int | None = Field(None, ge=0, description="default: last third of the epochs")
    end_layer_bits: Literal[1, 2, 7] | None = Field(
        None, description=f"bits of the first and last conv/linear layer of a binary or ternary student (default {MAX_WEIGHT_BITS}: "
        "they hold few weights and decide most of the accuracy: the first sees raw pixels, the last writes the logits)",
    )

    @model_validator(mode="after")
    def _end_layers_of_low_bit_students_only(self) -> "QuantizationConfig":
        if self.end_layer_bits is not None and self.bits not in LOW_BITS:
            raise ValueError(f"end_layer_bits is for binary or ternary students (bits 1 or 2), not bits {self.bits}; remove it")
        return self

    @property
    def layer_bits(self) -> tuple[int, int] | None:
        """(bits of the first and last layer, of every other layer), or None without a uniform `bits`."""
        if self.bits is None:
            return None
        ends = (self.end_layer_bits or MAX_WEIGHT_BITS) if self.bits in LOW_BITS else self.bits
        return ends, self.bits

    @property
    def active(self) -> bool:
        return self.bits is not None or bool(self.per_layer)

    def bits_of(self, layers: list[str]) -> list[int]:
        """Weight bits of each named conv/linear layer (in `weight_layers` order): its `per_layer` entry, else the uniform
        setting (the first and last layer of a binary or ternary student at `end_layer_bits`), else `FLOAT_WEIGHT_BITS`."""
        ends, middle = self.layer_bits or (FLOAT_WEIGHT_BITS, FLOAT_WEIGHT_BITS)
        return [self.per_layer.get(name, ends if index in (0, len(layers) - 1) else middle) for index, name in enumerate(layers)]

    @field_validator("bits", mode="before")
    @classmethod
    def _no_8bit_grid(cls, value: Any) -> Any:
        if value == 8:
            raise ValueError(
                f"8 is not offered: int8 weight codes past +-63 saturate ONNX Runtime's integer kernels on x86 CPUs without VNNI, "
                f"so the shipped file would compute another model; use {MAX_WEIGHT_BITS} (exact on every CPU)"
            )
        return value


class LowRankConfig(StrictModel):
    rank_ratio: float | None = Field(None, gt=0, le=1)


class AllocationConfig(StrictModel):
    """Per-layer bits and sparsity chosen under a budget from the student's measured sensitivity (`compress/allocation.py`):
    each layer takes one (bits, sparsity) candidate so that the summed output shift is least and the stored weights fit."""

    bits_per_weight: float | None = Field(
        None, gt=0, le=MAX_WEIGHT_BITS, description="the budget: stored bits per conv/linear weight on average (zeros as a bitmap, "
        "per-channel scales on top); searchable. Unset: no allocation",
    )
    bits: list[WeightBitWidth] = Field(default_factory=lambda: [2, 4, 7], min_length=1, description="candidate weight bits of every layer")
    sparsities: list[float] = Field(default_factory=lambda: [0.0, 0.5, 0.8], min_length=1, description="candidate sparsities of every layer")
    profile_epochs: int = Field(2, ge=1, description="epochs the reference student trains (labels only) before it is profiled, once per sweep")
    profile_samples: int = Field(2000, ge=100, description="validation images the profile's output shifts are measured on")

    @field_validator("sparsities")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if bad := [s for s in value if not 0 <= s <= 0.95]:
            raise ValueError(f"every candidate sparsity must be in [0, 0.95], got {bad}")
        return value

    @model_validator(mode="after")
    def _budget_reachable(self) -> "AllocationConfig":
        if self.bits_per_weight is not None and self.bits_per_weight < self.cheapest_bits_per_weight:
            raise ValueError(f"bits_per_weight {self.bits_per_weight} is below the cheapest candidate ({self.cheapest_bits_per_weight:.2f} bits "
                             f"per weight at {min(self.bits)} bits, {max(self.sparsities):.0%} sparse); raise it or add cheaper candidates")
        return self

    @property
    def cheapest_bits_per_weight(self) -> float:
        return min(stored_bits_per_weight(bits, sparsity) for bits in self.bits for sparsity in self.sparsities)

    @property
    def active(self) -> bool:
        return self.bits_per_weight is not None


def stored_bits(count: float, nonzero: float, bits: int) -> float:
    """Bits `count` weights with `nonzero` non-zeros take at `bits`: dense, or a 1-bit-per-weight bitmap plus the
    non-zeros when smaller (per-channel scales aside). The one storage formula: `size_bytes` measures with it
    (`compress/cost.py: stored_weight_bits`) and allocation budgets with it."""
    return min(count * bits, count + nonzero * bits)


def stored_bits_per_weight(bits: int, sparsity: float) -> float:
    """`stored_bits` of one weight at `sparsity`: what an allocation budget in bits per weight counts."""
    return stored_bits(1, 1 - sparsity, bits)


class CompressionConfig(StrictModel):
    pruning: PruningConfig = PruningConfig()
    channel_pruning: ChannelPruningConfig = ChannelPruningConfig()
    quantization: QuantizationConfig = QuantizationConfig()
    low_rank: LowRankConfig = LowRankConfig()
    allocation: AllocationConfig = AllocationConfig()
