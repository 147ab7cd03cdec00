"""What distillation bought for the pick: its test accuracy against a labels-only control of the same configuration.

Pure figures, no I/O (`sweep/control.py` trains the control). The comparison is on the test split, which no decision
reads: the pick's validation accuracy won a selection and is biased upwards, its test accuracy and the control's are
not. Each seed pairs a run with the teacher and one without (same seed, compression and schedule), so the gain is the
mean of paired differences and its spread their standard deviation.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from lepton_ray import metrics


@dataclass(frozen=True)
class SeedPair:
    """One seed of the comparison: the final metrics of the run with the teacher and of the labels-only control."""

    seed: int
    with_teacher: dict[str, float]
    labels_only: dict[str, float]

    def difference_points(self, metric: str = metrics.TEST_ACCURACY) -> float:
        return 100 * (float(self.with_teacher[metric]) - float(self.labels_only[metric]))


@dataclass(frozen=True)
class DistillationGain:
    """The comparison for the picked trial; `skipped` says why there is none (the pick used no teacher, or the control failed)."""

    trial: int
    pairs: tuple[SeedPair, ...] = ()
    skipped: str = ""
    failures: tuple[str, ...] = field(default=())
    labels_only_smoothing: float | None = None
    """The control's label smoothing when `selection.distillation_control.label_smoothing` set one; None: the pick's own."""

    @property
    def measured(self) -> bool:
        return bool(self.pairs)

    def mean(self, arm: str, metric: str = metrics.TEST_ACCURACY) -> float:
        return statistics.mean(float(getattr(pair, arm).get(metric, math.nan)) for pair in self.pairs) if self.pairs else math.nan

    @property
    def gain_points(self) -> float:
        """Mean over seeds of (with teacher - labels only) test accuracy, in points; NaN when not measured."""
        return statistics.mean(pair.difference_points() for pair in self.pairs) if self.pairs else math.nan

    @property
    def spread_points(self) -> float:
        """Standard deviation of the paired differences over seeds (NaN with one seed: no spread to give)."""
        return statistics.stdev(pair.difference_points() for pair in self.pairs) if len(self.pairs) > 1 else math.nan

    def sentence(self) -> str:
        """One line for the summary, the report and the registered model's description."""
        if not self.measured:
            return f"distillation gain not measured: {self.skipped}"
        seeds = len(self.pairs)
        spread = f", sd {self.spread_points:.2f} pt" if seeds > 1 else ", 1 seed: no spread; selection.distillation_control.seeds gives one"
        return (f"distillation bought {self.gain_points:+.2f} pt of test accuracy at this compression: trial {self.trial} "
                f"{self.mean('with_teacher'):.4f} with the teacher vs {self.mean('labels_only'):.4f} labels only "
                f"(same configuration, alpha 0{self._smoothing_words()}; {seeds} seed{'s' if seeds > 1 else ''}{spread})")

    def _smoothing_words(self) -> str:
        return "" if self.labels_only_smoothing is None else f", labels smoothed {self.labels_only_smoothing:g}"

    def as_metrics(self) -> dict[str, float]:
        """Figures for the sweep's MLflow run."""
        if not self.measured:
            return {}
        return {
            metrics.KD_GAIN_POINTS: self.gain_points, "kd_gain_seeds": float(len(self.pairs)),
            "control_test_accuracy": self.mean("labels_only"), "control_int8_val_accuracy": self.mean("labels_only", metrics.INT8_VAL_ACCURACY),
            **({"kd_gain_sd_points": self.spread_points} if len(self.pairs) > 1 else {}),
            **({"control_label_smoothing": self.labels_only_smoothing} if self.labels_only_smoothing is not None else {}),
        }

    def markdown(self) -> str:
        """The report's section: the sentence, then one row per seed."""
        if not self.measured:
            return f"- {self.sentence()}"
        rows = [f"| {pair.seed} | {float(pair.with_teacher[metrics.TEST_ACCURACY]):.4f} | {float(pair.labels_only[metrics.TEST_ACCURACY]):.4f} | "
                f"{pair.difference_points():+.2f} | {float(pair.with_teacher.get(metrics.INT8_VAL_ACCURACY, math.nan)):.4f} | "
                f"{float(pair.labels_only.get(metrics.INT8_VAL_ACCURACY, math.nan)):.4f} |" for pair in self.pairs]
        return "\n".join([
            f"{self.sentence()}.", "",
            "Test accuracy of the trained student (PyTorch; its int8 file holds it within `export.tolerance`), and the int8 file's validation accuracy:", "",
            "| seed | test, with teacher | test, labels only | gain (pt) | int8 val, with teacher | int8 val, labels only |",
            "|---:|---:|---:|---:|---:|---:|", *rows,
        ])
