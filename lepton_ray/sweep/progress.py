"""Live progress of a sweep in the driver: one status line per finished trial and every few seconds; one line per epoch for `train`."""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

from ray.tune import Callback

from lepton_ray import metrics
from lepton_ray.deploy.pareto import pareto_front
from lepton_ray.console import echo
from lepton_ray.sweep.study import is_final_result


class SweepProgress(Callback):
    """Prints one status line at most every `interval_s`: done/running/failed, best accuracy, front size, ETA."""

    def __init__(
        self, total: int, already_done: int, cost_metric: str, interval_s: float = 10.0, log: Callable[[str], None] = echo,
        max_int8_drop_points: float | None = None, earlier_results: Sequence[dict] = (),
    ) -> None:
        self.total = total
        self.max_int8_drop_points = max_int8_drop_points
        """`export.tolerance`: a trial whose int8 file falls further below its own accuracy is kept off the front, as `select` keeps it."""
        self.already_done = already_done
        self.cost_metric = cost_metric
        self.interval_s = interval_s
        self.log = log
        self.started = time.monotonic()
        self.last_print = 0.0
        self.points: list[tuple[float, float]] = []
        """(accuracy, cost) of the trials finished since this driver started: the ETA counts these."""
        self.earlier_points = [point for point in map(self._front_point, earlier_results) if point is not None]
        """The same for trials finished before a --resume (counted in `already_done`): best and front include them."""
        self.off_front = 0
        """Finished trials whose int8 file fell outside `max_int8_drop_points`."""
        self.ended: set[str] = set()
        """Trials already counted: Tune may still list a trial RUNNING while its completion callback runs."""
        self.failed = 0
        self.pruned = 0
        self.interrupted = 0
        """Trials stopped by a full disk: left for --resume, so not done."""

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        self.ended.add(trial.trial_id)
        if result.get(metrics.STORAGE_FULL):
            self.interrupted += 1
        elif result.get(metrics.INPUT_ERROR):
            self.failed += 1
        elif not is_final_result(result):
            self.pruned += 1
        elif (point := self._front_point(result)) is None:
            self.off_front += 1
        else:
            self.points.append(point)
        self._print(trials, force=True)

    def _front_point(self, result: dict) -> tuple[float, float] | None:
        """(accuracy, cost) of a final result, or None where its int8 file is kept off the front."""
        if not is_final_result(result) or not self._int8_holds(result):
            return None
        return float(result.get(metrics.SELECTION_ACCURACY, "nan")), float(result[self.cost_metric])

    def _int8_holds(self, result: dict) -> bool:
        accuracy, int8 = result.get(metrics.BEST_VAL_ACCURACY), result.get(metrics.INT8_VAL_ACCURACY)
        if self.max_int8_drop_points is None or accuracy is None or int8 is None or math.isnan(float(int8)):
            return True
        return (float(accuracy) - float(int8)) * 100 <= self.max_int8_drop_points + 1e-9

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.ended.add(trial.trial_id)
        self.failed += 1
        self._print(trials, force=True)

    def on_step_end(self, iteration, trials, **info) -> None:
        self._print(trials)

    def on_experiment_end(self, trials, **info) -> None:
        self._print(trials, force=True)

    def _print(self, trials, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_print < self.interval_s:
            return
        self.last_print = now
        running = sum(1 for t in trials if t.status == "RUNNING" and t.trial_id not in self.ended)
        finished_now = len(self.points) + self.off_front + self.failed + self.pruned
        done = self.already_done + finished_now
        elapsed = now - self.started
        eta = f"~{(elapsed / finished_now) * (self.total - done):.0f}s left" if finished_now else "eta unknown"
        points = self.earlier_points + self.points
        best = max((acc for acc, _ in points if math.isfinite(acc)), default=float("nan"))
        front = int(pareto_front([a for a, _ in points], [c for _, c in points]).sum()) if points else 0
        interrupted = f", {self.interrupted} interrupted (storage full)" if self.interrupted else ""
        off_front = f", {self.off_front} int8 file outside export.tolerance" if self.off_front else ""
        self.log(
            f"[sweep] {done}/{self.total} done ({self.failed} failed, {self.pruned} pruned{off_front}{interrupted}), {running} running | "
            f"best {metrics.SELECTION_ACCURACY} {best:.4f} | front size {front} | {elapsed:.0f}s elapsed, {eta}"
        )


class EpochLines(Callback):
    """One line per epoch a trial reports: epoch, train loss, val accuracy, images/s (`lepton-ray train`)."""

    def __init__(self, epochs: int, log: Callable[[str], None] = echo) -> None:
        self.epochs = epochs
        self.log = log

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if metrics.EPOCH not in result or metrics.TRAIN_LOSS not in result:
            return  # a trial finished before a resume reports its final metrics only
        self.log(
            f"[train] epoch {int(result[metrics.EPOCH])}/{self.epochs} | train_loss {result[metrics.TRAIN_LOSS]:.4f} | "
            f"val_accuracy {result[metrics.VAL_ACCURACY]:.4f} | {result[metrics.IMAGES_PER_S]:.0f} images/s"
        )
