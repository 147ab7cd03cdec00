"""A finished sweep: its outcome, read back for `select`/`export`, and its last stage (select, export, publish)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from lepton_ray import metrics
from lepton_ray.config import WorkflowConfig
from lepton_ray.errors import ConfigError, TrackingError
from lepton_ray.sweep.paths import SweepPaths, sweep_paths
from lepton_ray.sweep.study import open_study, sweep_id
from lepton_ray.tracking.leaderboard import trials_frame
from lepton_ray.tracking.tracker import Tracker
from lepton_ray.tracking.uris import check_reachable, redact, tracking_uri

if TYPE_CHECKING:
    from lepton_ray.data.datasets import DataSplits
    from lepton_ray.deploy.publish import ExportResult


@dataclass
class SweepOutcome:
    parent_run_id: str
    paths: SweepPaths
    trials: Any
    """pandas DataFrame: one row per trial, as in the leaderboard."""
    teacher_accuracy: float
    selection: Any = None


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
    teacher_accuracy = tracker.client.get_run(parent_run_id).data.metrics.get(metrics.TEACHER_TEST_ACCURACY, math.nan)
    return SweepOutcome(parent_run_id, paths, trials_frame(tracker, parent_run_id, wf.sweep.cost_metric, wf.export.tolerance), teacher_accuracy), tracker


def select_export_publish(wf: WorkflowConfig, outcome: SweepOutcome, data: "DataSplits", tracker: Tracker, log: Callable[[str], None]) -> ExportResult:
    """Pick by the workflow's policy, export to int8, verify in ORT, register; one line per step."""
    from lepton_ray.deploy.publish import select_and_export, student_loader  # torch, ONNX: not for `select`, which only reads

    out_dir = outcome.paths.root / "export"
    result = select_and_export(
        wf, outcome.trials, outcome.teacher_accuracy, student_loader(outcome.paths.trials), data, tracker, outcome.parent_run_id, out_dir
    )
    log(result.selection.explanation)
    checks = result.checks
    log(f"int8 ONNX {result.files.int8}: accuracy {checks.int8_accuracy:.4f} (trial {checks.trial_accuracy:.4f}), "
        f"{checks.size_ratio:.2f}x the fp32 file, fp32/int8 latency {checks.speedup(1):.2f}x at batch 1")
    log(f"registered {result.published.model_uri} (alias champion); report {result.report}")
    return result
