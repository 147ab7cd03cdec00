"""Tune callback run in the sweep driver: MLflow logging, the single writer (one child run per trial)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ray.tune import Callback

from lepton_ray import metrics
from lepton_ray.sweep.study import NUMBER_KEY
from lepton_ray.tracking.tracker import Tracker
from lepton_ray.trial.files import ALLOCATION_FILE, STUDENT_FILE
from lepton_ray.trial.sessions import CHECKPOINT_PATH_KEY


LOGGED_METRICS = {
    metrics.EPOCH, metrics.TRAIN_LOSS, metrics.VAL_ACCURACY, metrics.VAL_LOSS, metrics.TEST_ACCURACY,
    *metrics.ESTIMATES, metrics.BITS, metrics.INT8_FILE_BYTES, metrics.INT8_GZIP_BYTES, metrics.LATENCY_MS, metrics.LATENCY_IQR_MS,
    metrics.LATENCY_BATCH_MS, metrics.LATENCY_BATCH_IQR_MS, metrics.INT8_VAL_ACCURACY, metrics.BEST_VAL_ACCURACY, metrics.BEST_EPOCH, metrics.DIVERGED,
    metrics.RESTARTS, metrics.IMAGES_PER_S, metrics.SETUP_S, metrics.COMPUTE_S, metrics.REESTIMATE_S, metrics.FINISH_S, metrics.PLANNED_SIZE_BYTES,
}


NODES_TAG = "lepton.nodes"
"""On a trial's run: the Ray node ids it trained on, comma-separated, in order (in-process trials)."""


def trial_key(sweep_key: str, number: int) -> str:
    return f"{sweep_key}/trial-{number:04d}"


def trial_overrides(config: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key != NUMBER_KEY}


class MlflowTrialLogger(Callback):
    """One MLflow child run per Optuna trial number, re-opened (not duplicated) after a resume.

    MLflow going away never stops trials: the tracker queues writes and replays them when the
    server is back; at the end of the experiment whatever could not be logged is listed.
    """

    def __init__(
        self, tracker: Tracker, parent_run_id: str, sweep_key: str, tags: dict[str, str],
        reference_metrics: dict[str, float] | None = None,
    ) -> None:
        self.tracker = tracker
        self.reference_metrics = dict(reference_metrics or {})
        """Logged on every trial run (the teacher's test accuracy), so a run reads on its own."""
        self.parent_run_id = parent_run_id
        self.sweep_key = sweep_key
        self.tags = tags
        self.run_ids: dict[str, str] = {}
        self.logged_epochs: dict[str, set[int]] = {}
        """Epochs each trial's run holds: those logged before a resume, then each one as it is logged."""
        self.nodes: dict[str, list[str]] = {}
        """Ray nodes each trial trained on, in order: a new one after a restart elsewhere is tagged at once."""
        self.epochs_trained = 0
        self.epochs_redone = 0

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        number = trial.config[NUMBER_KEY]
        params = trial_overrides(trial.config)  # the searched knobs alone: the sweep run holds the workflow once
        knobs = {f"knob.{k}": f"{v:.6g}" if isinstance(v, float) else str(v) for k, v in trial_overrides(trial.config).items()}
        tags = {**self.tags, "optuna_trial": str(number), "tune_trial_id": trial.trial_id, **knobs}
        run_id = self.tracker.start_run(trial_key(self.sweep_key, number), f"trial-{number:04d}", params, tags, parent_run_id=self.parent_run_id)
        self.run_ids[trial.trial_id] = run_id
        self.logged_epochs[trial.trial_id] = self.tracker.logged_steps(run_id, metrics.EPOCH)
        if self.reference_metrics:
            self.tracker.log_metrics(run_id, self.reference_metrics)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if metrics.EPOCH in result:  # a trial finished before a resume reports its final metrics only, no epoch
            epoch = int(result[metrics.EPOCH])
            logged = self.logged_epochs.setdefault(trial.trial_id, set())
            self.epochs_trained += 1
            self.epochs_redone += epoch in logged  # also epochs repeated after a worker restart within this run
            logged.add(epoch)
        if run_id:
            values = {k: v for k, v in result.items() if k in LOGGED_METRICS}
            self.tracker.log_metrics(run_id, values, step=int(result.get(metrics.EPOCH, 0)))
            self._tag_node(trial.trial_id, run_id, result.get(metrics.NODE_ID))

    def _tag_node(self, trial_id: str, run_id: str, node_id: str | None) -> None:
        nodes = self.nodes.setdefault(trial_id, [])
        if node_id and (not nodes or nodes[-1] != node_id):
            nodes.append(node_id)
            self.tracker.set_tags(run_id, {NODES_TAG: ",".join(nodes)})

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.nodes.pop(trial.trial_id, None)
        self.logged_epochs.pop(trial.trial_id, None)
        run_id = self.run_ids.pop(trial.trial_id, None)
        if run_id is not None:
            close_trial_run(self.tracker, run_id, trial.last_result or {})

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.nodes.pop(trial.trial_id, None)
        self.logged_epochs.pop(trial.trial_id, None)
        run_id = self.run_ids.pop(trial.trial_id, None)
        if run_id is not None:
            self.tracker.finish(run_id, "FAILED", error=last_error_line(trial))

    def on_experiment_end(self, trials, **info) -> None:
        """Wasted work of a resume or restart: epochs trained again that a run had already logged."""
        if self.epochs_trained:
            self.tracker.log_metrics(self.parent_run_id, {metrics.EPOCHS_REDONE: self.epochs_redone, metrics.EPOCHS_TRAINED: self.epochs_trained})
        if self.epochs_redone:
            print(f"lepton-ray: {self.epochs_redone} of {self.epochs_trained} epochs trained in this run were redone after a restart "
                  f"({100 * self.epochs_redone / self.epochs_trained:.1f}%)")
        self.tracker.report_unlogged()


def close_trial_run(tracker: Tracker, run_id: str, result: dict[str, Any]) -> None:
    """End a trial's run from its last result: FINISHED with its student, or KILLED with why."""
    if result.get(metrics.STORAGE_FULL):
        tracker.finish(run_id, "KILLED", error="storage full: interrupted, continues from its last checkpoint on --resume")
        return
    if result.get(metrics.INPUT_ERROR):
        tracker.finish(run_id, "FAILED", error=str(result[metrics.INPUT_ERROR]))
        return
    if metrics.BEST_VAL_ACCURACY not in result:
        tracker.finish(run_id, "KILLED", error="stopped early by the scheduler (pruned); not eligible for the front")
        return
    student_dir = result.get(CHECKPOINT_PATH_KEY)
    if student_dir and (Path(student_dir) / STUDENT_FILE).is_file():
        tracker.log_artifacts(run_id, [Path(student_dir) / STUDENT_FILE], "student")  # the run's `student/student.pt`, no path into this machine's folders
    if student_dir and (Path(student_dir) / ALLOCATION_FILE).is_file():
        tracker.log_artifacts(run_id, [Path(student_dir) / ALLOCATION_FILE], "allocation")  # per layer: bits, sparsity, bytes, shift
    tracker.finish(run_id, "FINISHED")


def close_runs_of_finished_trials(
    tracker: Tracker, parent_run_id: str, finished: dict[int, str], final_result: Callable[[int], dict[str, Any] | None],
) -> list[int]:
    """Runs a killed driver left RUNNING although the study had finished their trial.

    Tune tells the searcher (the study) before the callbacks, so a driver killed in between leaves a
    COMPLETE trial whose run never closed, and a resume never re-runs it. `finished` maps trial
    number -> study state; `final_result(number)` reads a completed trial's metrics from its checkpoint.
    Returns the numbers closed.
    """
    closed = []
    for number, run in tracker.running_child_runs(parent_run_id, "optuna_trial").items():
        run_id, state = run.info.run_id, finished.get(int(number))
        if state is None:
            continue  # still to run: the resume re-opens this run
        if state == "COMPLETE":
            result = final_result(int(number)) or {}
            missing = {k: v for k, v in result.items() if k in LOGGED_METRICS and k not in run.data.metrics}
            tracker.log_metrics(run_id, missing)
            close_trial_run(tracker, run_id, result)
        elif state == "PRUNED":
            tracker.finish(run_id, "KILLED", error="stopped early (pruned or diverged); not eligible for the front")
        else:
            tracker.finish(run_id, "FAILED", error="failed before the driver was interrupted; see the trial's folder for its error")
        closed.append(int(number))
    return sorted(closed)


def last_error_line(trial) -> str:
    """The exception line of a failed trial's traceback (what a user needs in the leaderboard)."""
    text = ""
    if trial.error_file and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text()
    return error_line(text or trial.get_error() or "")


def error_line(text: Any) -> str:
    """The last exception line of a traceback or error text."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    exception_lines = [line for line in lines if "Error:" in line or "Exception:" in line]
    return (exception_lines or lines or ["unknown error"])[-1][:2000]
