"""The sweep's last stage: load the picked trial's student from its checkpoint and hand it to export.

Kept apart from `export.py` (which works on any module) so export stays free of sweep layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from lepton_ray.checkpoints import load_safe
from lepton_ray.config import parse_workflow
from lepton_ray.errors import CheckpointError
from lepton_ray.trial import STUDENT_FILE, load_student

if TYPE_CHECKING:
    from lepton_ray.config import WorkflowConfig
    from lepton_ray.data import DataSplits
    from lepton_ray.export import ExportResult
    from lepton_ray.sweep import SweepOutcome
    from lepton_ray.tracking import Tracker


def student_file(trials_root: Path, trial: int) -> Path:
    """The shipped student of a finished trial, or a clear error when it never finished."""
    from lepton_ray.sweep import newest_student_file, trial_run_name

    path = newest_student_file(Path(trials_root) / trial_run_name(trial))
    if path is None:
        raise CheckpointError(f"trial {trial}: no {STUDENT_FILE} under {trials_root}; the trial did not finish, pick another or --resume the sweep")
    return path


def student_loader(trials_root: Path) -> Callable[[dict[str, Any]], tuple[nn.Module, dict[str, Any]]]:
    """Rebuild a trial's student with that trial's own workflow (its compression decides the structure)."""

    def load(row: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
        path = student_file(trials_root, int(row["trial"]))
        payload = load_safe(path, f"trial {row['trial']} student")
        return load_student(parse_workflow(payload["workflow"]), payload), dict(payload.get("metrics", {}))

    return load


def select_export_publish(wf: "WorkflowConfig", outcome: "SweepOutcome", data: "DataSplits", tracker: "Tracker", log: Callable[[str], None]) -> "ExportResult":
    """Pick by the workflow's policy, export to int8, verify in ORT, register; one line per step."""
    from lepton_ray.export import select_and_export

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


def existing_sweep(wf: "WorkflowConfig") -> tuple["SweepOutcome", "Tracker"]:
    """A finished sweep of this workflow read back from its study folder and MLflow (`select`, `export`)."""
    import math

    from lepton_ray import metrics
    from lepton_ray.errors import ConfigError, TrackingError
    from lepton_ray.leaderboard import trials_frame
    from lepton_ray.search import sweep_id
    from lepton_ray.sweep import SweepOutcome, sweep_paths
    from lepton_ray.tracking import Tracker, check_reachable, redact, tracking_uri

    paths = sweep_paths(wf, single=False)
    if not paths.study.is_file():
        raise ConfigError(f"output_dir: no sweep under {paths.root}; run `lepton-ray sweep` on this workflow first")
    uri = tracking_uri(wf.tracking.uri)
    check_reachable(uri)
    tracker = Tracker(uri, wf.tracking.experiment, create=False)
    parent_run_id = tracker.find_run(paths.key(sweep_id(paths.root)))
    if parent_run_id is None:
        raise TrackingError(f"tracking.experiment: no sweep run for {paths.root} in {wf.tracking.experiment!r} at {redact(uri)}; check tracking.uri and the experiment")
    teacher_accuracy = tracker.client.get_run(parent_run_id).data.metrics.get(metrics.TEACHER_TEST_ACCURACY, math.nan)
    return SweepOutcome(parent_run_id, paths, trials_frame(tracker, parent_run_id, wf.sweep.cost_metric), teacher_accuracy), tracker
