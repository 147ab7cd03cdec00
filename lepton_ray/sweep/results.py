"""A finished sweep: its outcome, read back for `select`/`export`, and its last stage (select, export, publish)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from lepton_ray import metrics
from lepton_ray.config import WorkflowConfig
from lepton_ray.deploy.pareto import noise_note
from lepton_ray.errors import ConfigError, TrackingError
from lepton_ray.sweep.paths import SweepPaths, sweep_paths
from lepton_ray.sweep.study import open_study, sweep_id
from lepton_ray.deploy.leaderboard import latest_sweep_run_id, trials_frame
from lepton_ray.tracking.tracker import Tracker
from lepton_ray.tracking.uris import check_reachable, redact, tracking_uri

if TYPE_CHECKING:
    from lepton_ray.data.datasets import DataSplits
    from lepton_ray.deploy.kd_gain import DistillationGain
    from lepton_ray.deploy.pareto import Selection
    from lepton_ray.deploy.publish import ExportResult
    from lepton_ray.trial.teacher import Teacher


@dataclass
class SweepOutcome:
    parent_run_id: str
    paths: SweepPaths
    trials: Any
    """pandas DataFrame: one row per trial, as in the leaderboard."""
    teacher_accuracy: float
    """The teacher's validation accuracy: what a policy's `reference: teacher` compares with (no decision reads test)."""
    selection: Any = None
    val_samples: int | None = None
    """Size of the validation split: the standard error of the figure every decision ranks by."""


def workflow_sweep_run_id(wf: WorkflowConfig, tracker: Tracker) -> str | None:
    """The workflow's own sweep run: the one its output folder holds (what `select` and `export` read), else, with no
    sweep folder here (a reviewer on another machine), the newest sweep run of this workflow in the experiment."""
    paths = sweep_paths(wf, single=False)
    if paths.study.is_file():
        found = tracker.find_run(paths.key(sweep_id(open_study(paths.root, wf.sweep))))
        if found is not None:
            return found
    return latest_sweep_run_id(tracker, wf.name)


def existing_sweep(wf: WorkflowConfig) -> tuple[SweepOutcome, Tracker]:
    """A finished sweep of this workflow read back from its study folder and MLflow (`select`, `export`)."""
    paths = sweep_paths(wf, single=False)
    if not paths.study.is_file():
        raise ConfigError(f"output_dir: no sweep under {paths.root}; run `lepton-ray sweep` on this workflow first")
    uri = tracking_uri(wf.tracking.uri)
    check_reachable(uri)
    tracker = Tracker(uri, wf.tracking.experiment, create=False)
    parent_run_id = tracker.find_run(paths.key(sweep_id(open_study(paths.root, wf.sweep))))
    if parent_run_id is None:
        raise TrackingError(f"tracking.experiment: no sweep run for {paths.root} in {wf.tracking.experiment!r} at {redact(uri)}; check tracking.uri and the experiment")
    parent_metrics = tracker.client.get_run(parent_run_id).data.metrics
    teacher_accuracy = parent_metrics.get(metrics.TEACHER_VAL_ACCURACY, math.nan)
    val_samples = parent_metrics.get(metrics.VAL_SAMPLES)
    trials = trials_frame(tracker, parent_run_id, wf.sweep.cost_metric, wf.export.tolerance)
    return SweepOutcome(parent_run_id, paths, trials, teacher_accuracy, val_samples=None if val_samples is None else int(val_samples)), tracker


def select_export_publish(
    wf: WorkflowConfig, outcome: SweepOutcome, data: "DataSplits", tracker: Tracker, log: Callable[[str], None],
    teachers: Callable[[], list["Teacher"]] | None = None, address: str | None = None, trial: int | None = None,
) -> ExportResult:
    """Pick by the workflow's policy (on validation), measure what distillation bought for the pick (the labels-only
    control, on Ray at `address`), export to int8, verify in ORT, register; one line per step. `teachers` gives the
    sweep's teachers when a control run needs one (default: the teacher stage, reading the cached file); `trial`
    exports that trial instead of the policy's pick."""
    from lepton_ray.deploy.publish import select_and_export, student_loader  # torch, ONNX: not for `select`, which only reads
    from lepton_ray.sweep.control import measure_distillation_gain
    from lepton_ray.trial.teacher import prepare_teachers

    def measure_gain(selection: Selection) -> DistillationGain:
        log(selection.explanation)
        return measure_distillation_gain(wf, int(selection.trial), outcome.paths, data, teachers or (lambda: prepare_teachers(wf, data, log)), address, log)

    out_dir = outcome.paths.root / "export"
    result = select_and_export(
        wf, outcome.trials, outcome.teacher_accuracy, student_loader(outcome.paths.trials), data, tracker, outcome.parent_run_id, out_dir,
        measure_gain if wf.selection.distillation_control.enabled else None, trial,
    )
    if result.gain is None:
        log(result.selection.explanation)
    checks = result.checks
    log(f"int8 ONNX {result.files.int8}: validation accuracy {checks.int8_accuracy:.4f} (trial {checks.trial_accuracy:.4f}), "
        f"{checks.size_ratio:.2f}x the fp32 file, fp32/int8 latency {checks.speedup(1):.2f}x at batch 1")
    log(f"estimate of what ships: int8 test accuracy {checks.int8_test_accuracy:.4f} ({noise_note(checks.int8_test_accuracy, len(data.test), 'test')}); "
        f"{result.gain.sentence() if result.gain is not None else 'distillation control off'}")
    log(f"registered {result.published.model_uri} (alias champion); report {result.report}")
    return result
