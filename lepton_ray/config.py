"""Typed workflow configs: YAML in, frozen validated models out (search spaces: `search_space.py`).

This is the only place defaults live. YAML is read by `yaml_input.py` (the safe loader, no tags
that run code); every error becomes a `ConfigError` naming the field and the allowed values.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_serializer, model_validator

from lepton_ray import metrics
from lepton_ray.compression_config import (  # noqa: F401  (re-exported: the compression block of a workflow)
    FLOAT_WEIGHT_BITS, LOW_BITS, MAX_WEIGHT_BITS, AllocationConfig, ChannelPruningConfig, CompressionConfig, LowRankConfig, PruningConfig,
    QuantizationConfig, WeightBitWidth, stored_bits_per_weight,
)
from lepton_ray.config_base import StrictModel
from lepton_ray.errors import ConfigError
from lepton_ray.yaml_input import apply_overrides, read_yaml

Scalar = Union[bool, int, float, str, None]
Options = dict[str, Union[Scalar, list[Scalar]]]


class AugmentConfig(StrictModel):
    """Replayable training augmentation (see `lepton_ray/data/batches.py`): fixed views, not fresh randomness."""

    hflip: bool = False
    crop_padding: int = Field(0, ge=0, le=16, description="pad by this many pixels, then crop back at a per-sample offset")
    views: int = Field(4, ge=1, le=64, description="distinct augmented views of the training split; epoch e trains on view e % views")
    mix: Literal["none", "mixup", "cutmix"] = Field("none", description=(
        "function matching (Beyer et al., CVPR 2022): each image mixed with a partner drawn per view (mixup: blended; cutmix: a "
        "box pasted), labels mixed in the same share; replayed like flips and crops, so cached teacher outputs stay exact"))
    mix_alpha: float = Field(1.0, gt=0, le=10, description="the share of a sample's own image is drawn from Beta(mix_alpha, mix_alpha)")

    @model_serializer(mode="wrap")
    def _mixing_only_when_on(self, handler: Any) -> dict[str, Any]:
        """Without mixing, dump as before the mixing fields existed: teacher fingerprints and teacher-cache keys are
        hashes of these dumps, and a cached teacher (an hour of training on real data) must not retrain for them."""
        dumped = handler(self)
        if self.mix == "none":
            dumped.pop("mix", None)
            dumped.pop("mix_alpha", None)
        return dumped


class DataConfig(StrictModel):
    name: str = "digits"
    root: Path | None = None
    download: bool = False
    seed: int = 0
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    label_fraction: float = Field(1.0, gt=0, le=1, description="fraction of training samples that keep their label; the rest are an unlabeled transfer set for distillation")
    augment: AugmentConfig | None = None
    options: Options = Field(default_factory=dict)


class ModelSpec(StrictModel):
    name: str
    options: Options = Field(default_factory=dict)


class TeacherTrainConfig(StrictModel):
    """Supervised training of a teacher in-process (Adam, cosine learning rate, best-val weights kept)."""

    epochs: int = Field(20, ge=1)
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    augment: AugmentConfig | None = Field(None, description="the teacher's own augmentation (the student's is data.augment)")


class TeacherConfig(ModelSpec):
    checkpoint: Path | None = None
    train: TeacherTrainConfig | None = None

    @model_validator(mode="after")
    def _needs_a_source(self) -> "TeacherConfig":
        if self.checkpoint is None and self.train is None:
            raise ValueError("set 'checkpoint' to a saved teacher or add a 'train' block to train one")
        return self


class LossSpec(StrictModel):
    name: str
    weight: float = Field(1.0, ge=0)
    options: Options = Field(default_factory=dict)


class DistillationConfig(StrictModel):
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of distillation terms vs hard-label CE")
    losses: list[LossSpec] = Field(default_factory=lambda: [LossSpec(name="kd")], min_length=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1, description=(
        "label smoothing of the hard-label CE term (torch's cross_entropy label_smoothing; 0.1 is the usual value), with or without "
        "a teacher: a labels-only baseline with it is the fair control for a soft-target loss, which also smooths"))


class TrainingConfig(StrictModel):
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0, le=10)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="cosine: lr decays to 0 over training.epochs (see trial/epoch.py: epoch_lr)")
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description=(
        "autocast dtype of the training passes (evaluation, the saved student and its export stay fp32). auto: bf16 where the device "
        "multiplies bf16 natively (a CUDA GPU that supports it; a CPU with AMX tiles: 2.5x a conv step here), fp32 elsewhere "
        "(trial/epoch.py: resolve_precision)"))
    divergence_loss: float = Field(1e4, gt=0, description="epoch train loss above which (or NaN/inf) a trial is stopped as diverged")
    channels_last: bool | None = Field(None, description=(
        "train the student's conv weights in channels_last memory format (oneDNN's NHWC kernels on CPU, tensor cores on GPU). "
        "Default (unset): on for a student with conv layers that runs on channels_last weights, off otherwise (text students, "
        "a forward that `.view`s a conv output); true: required (validate refuses a student that cannot); false: off. "
        "An epoch 0.74x as long on the FM student, accuracy within the seed spread (benchmarks/results/plain_loop.json, default_speedups.md)"))
    fused_optimizer: bool = Field(True, description=(
        "one fused kernel per optimizer step instead of a kernel per tensor (torch.optim's fused=True); the same update "
        "up to float rounding (benchmarks/results/default_speedups.json); false: torch's default (foreach)"))


class ResourcesConfig(StrictModel):
    num_workers: int = Field(2, ge=1, le=1024)
    cpus_per_worker: float = Field(0.49, gt=0)
    use_gpu: bool = False
    gpus_per_worker: float = Field(1.0, gt=0, le=8)
    max_concurrent_trials: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0, description="worker-group restarts per trial")


class TrackingConfig(StrictModel):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = Field("lepton-ray", min_length=1)
    model_name: str = Field("lepton-student", min_length=1)

    @field_validator("model_name")
    @classmethod
    def _registrable(cls, value: str) -> str:
        """MLflow's own rules for registered-model names, checked here so a sweep never ends on them."""
        if not value.strip() or "/" in value or ":" in value or posixpath.normpath(value) != value or value.startswith("."):
            raise ValueError("not a valid MLflow registered-model name (no '/', ':', blank or dot-only names); use e.g. digits-student")
        return value


class StopWhen(StrictModel):
    """The sweep's goal: it ends as soon as a finished trial meets every bound given (`sweep/goal.py`)."""

    min_accuracy: float | None = Field(None, ge=0, le=1, description="int8_val_accuracy at least this (the int8 file's validation accuracy; never test)")
    max_cost: float | None = Field(None, gt=0, description="sweep.cost_metric at most this (e.g. bytes of the gzipped int8 file)")

    @model_validator(mode="after")
    def _a_bound(self) -> "StopWhen":
        if self.min_accuracy is None and self.max_cost is None:
            raise ValueError("sets no bound; give min_accuracy, max_cost or both (e.g. {min_accuracy: 0.9, max_cost: 10000})")
        return self


class SweepConfig(StrictModel):
    space: Path | None = None
    num_samples: int = Field(12, ge=1)
    cost_metric: Literal[metrics.COST_METRICS] = Field(
        metrics.INT8_GZIP_BYTES, description="the cost the search minimises and the front is drawn against; default: the "
        "measured gzip bytes of the trial's int8 file (what shipping it costs; size_bytes is only an estimate)",
    )
    searcher: str = Field(
        "optuna", description="the Optuna sampler, by name (`lepton-ray list searchers`: gp, tpe, nsga2, random, ...); optuna: the default one (gp)"
    )
    scheduler: Literal["none", "asha", "moasha"] = Field(
        "none", description="early stopping (`sweep/schedulers.py`): asha by validation accuracy alone, moasha by Pareto rank of "
        "validation accuracy and planned size (keeps cheap students alive)",
    )
    seed: int = 0
    constraints: dict[str, float] = Field(default_factory=dict, description="metric -> max value")
    accuracy_floor: float | None = Field(
        None, ge=0, le=1, description="the lowest best_val_accuracy you would ship: the searcher counts trials below it as "
        "infeasible and spends its trials on the front above it (benchmarks/results/search_efficiency.md: the default "
        "searcher beats random search with a floor, ties it without one)",
    )
    teacher_cache: bool = Field(True, description="compute teacher outputs once per sweep and share them with all trials")
    teacher_cache_object_store_mb: float = Field(512, ge=0, description="larger caches stay a file on the sweep's storage that workers read")
    teacher_cache_top_k: int | None = Field(
        None, ge=1, description="keep each sample's k largest teacher logits (top-k probabilities exact, the rest's total mass kept); "
        "for many classes. Trials whose losses need every logit (logit_mse) run the teachers live",
    )
    baseline_trials: list[dict[str, Scalar]] = Field(
        default_factory=list, description="knob values to try first (e.g. today's production settings)"
    )
    stop_when: StopWhen | None = Field(None, description="end the sweep as soon as a finished trial meets this goal")
    warm_start: Path | None = Field(
        None, description="another sweep's folder (runs/<name>/sweep): its front is tried first and its finished trials "
        "join the sampler's history (same search-space knobs required)",
    )


class DistillationControlConfig(StrictModel):
    """After selection, the pick's own configuration trained again without the teacher (`sweep/control.py`)."""

    enabled: bool = Field(True, description="train the labels-only control and report what distillation bought (one trial per seed)")
    seeds: int = Field(1, ge=1, le=10, description=(
        "seeds of the comparison: the pick's own training.seed, then the next ones; each seed past the first also retrains the pick "
        "with its teacher, so the gain is a mean of paired differences"))
    label_smoothing: float | None = Field(None, ge=0, lt=1, description=(
        "distillation.label_smoothing of the labels-only arm; unset: the pick's own. A soft target smooths too, so 0.1 asks what "
        "the teacher buys over a smoothed baseline (the pick itself is never retrained smoothed)"))


class SelectionConfig(StrictModel):
    policy: str = "knee"
    options: Options = Field(default_factory=dict)
    distillation_control: DistillationControlConfig = DistillationControlConfig()


class ExportConfig(StrictModel):
    tolerance: float = Field(1.0, ge=0, le=100, description="max int8 accuracy drop, in points")
    calibration_samples: int = Field(512, ge=1)
    latency_batch_size: int = Field(64, ge=1)
    trial_latency: bool | None = Field(None, description=(
        "each trial times its int8 file in ONNX Runtime (latency_ms, latency_batch_ms: about 2 s of interleaved rounds). "
        "Default (unset): only when sweep.cost_metric is a latency; the published pick is timed either way"))

    def times_trials(self, cost_metric: str) -> bool:
        """Whether a trial measures its int8 file's latency: asked for, or the cost the sweep minimises."""
        return self.trial_latency if self.trial_latency is not None else cost_metric in metrics.LATENCY_COSTS


class WorkflowConfig(StrictModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: Path = Path("runs")
    user_code: list[Path] = Field(
        default_factory=list,
        description="your .py files or package folders; name their factories as module:attribute (lepton_ray/user_code.py)",
    )
    data: DataConfig = DataConfig()
    teacher: TeacherConfig
    extra_teachers: list[TeacherConfig] = Field(
        default_factory=list,
        description="more teachers: every logit loss distils from the ensemble (averaged probabilities, multi_teacher weighs them); "
        "feature losses read `teacher`'s features",
    )
    student: ModelSpec
    distillation: DistillationConfig = DistillationConfig()
    compression: CompressionConfig = CompressionConfig()
    training: TrainingConfig = TrainingConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    sweep: SweepConfig = SweepConfig()
    selection: SelectionConfig = SelectionConfig()
    export: ExportConfig = ExportConfig()

    @field_validator("name")
    @classmethod
    def _a_folder_inside_output_dir(cls, value: str) -> str:
        if set(value) == {"."}:
            raise ValueError("names the output folder itself or its parent; use a plain folder name such as digits_kd")
        return value

    @model_validator(mode="after")
    def _epochs_in_range(self) -> "WorkflowConfig":
        epochs = self.training.epochs
        pruning = self.compression.pruning
        if pruning.start_epoch >= epochs:
            raise ValueError(f"compression.pruning.start_epoch must be < training.epochs={epochs}, got {pruning.start_epoch}")
        if pruning.end_epoch is not None and not pruning.start_epoch <= pruning.end_epoch < epochs:
            raise ValueError(
                f"compression.pruning.end_epoch must be in [start_epoch={pruning.start_epoch}, "
                f"training.epochs-1={epochs - 1}], got {pruning.end_epoch}"
            )
        qat_start = self.compression.quantization.start_epoch
        if qat_start is not None and qat_start >= epochs:
            raise ValueError(
                f"compression.quantization.start_epoch must be < training.epochs={epochs}, got {qat_start}"
            )
        return self

    @model_validator(mode="after")
    def _allocation_replaces_uniform_settings(self) -> "WorkflowConfig":
        compression = self.compression
        if not compression.allocation.active:
            return self
        uniform = {"quantization.bits": compression.quantization.bits, "quantization.per_layer": compression.quantization.per_layer or None,
                   "pruning.sparsity": compression.pruning.sparsity or None, "pruning.per_layer": compression.pruning.per_layer or None,
                   "low_rank.rank_ratio": compression.low_rank.rank_ratio}
        if set_too := [name for name, value in uniform.items() if value is not None]:
            raise ValueError(f"compression.{set_too[0]} cannot be set with compression.allocation.bits_per_weight, which chooses every layer's "
                             "bits and sparsity; remove it")
        return self

    @model_validator(mode="after")
    def _latency_cost_is_timed(self) -> "WorkflowConfig":
        if self.export.trial_latency is False and self.sweep.cost_metric in metrics.LATENCY_COSTS:
            raise ValueError(f"export.trial_latency must be unset or true when sweep.cost_metric is a latency ({self.sweep.cost_metric}), "
                             "which every trial times; remove export.trial_latency")
        return self

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def validation_error_line(err: ValidationError, prefix: str = "") -> str:
    first = err.errors()[0]
    loc = ".".join(str(part) for part in first["loc"] if not str(part).startswith(("function-", "tagged-union")))
    field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "workflow"
    if first["type"] == "extra_forbidden":
        return f"{field}: unknown key; remove it or check its spelling"
    if first["type"] == "missing":
        return f"{field}: required key is missing"
    message = first["msg"].removeprefix("Value error, ")
    cross_field = re.match(r"([a-z_]+(?:\.[a-z_0-9]+)+) (.*)", message)
    if not loc and cross_field:  # a rule over several fields names the one to fix first
        return f"{prefix}{cross_field[1]}: {cross_field[2]}"
    shown = repr(first.get("input"))
    return f"{field}: {message}" + (f" (got {shown})" if len(shown) <= 80 else "")


def parse_workflow(raw: dict[str, Any]) -> WorkflowConfig:
    try:
        return WorkflowConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(validation_error_line(err)) from None


def load_workflow(path: Path, overrides: dict[str, Any] | None = None) -> WorkflowConfig:
    return parse_workflow(apply_overrides(read_yaml(path, "workflow"), overrides or {}))
