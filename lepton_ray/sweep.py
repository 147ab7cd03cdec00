"""`lepton-ray sweep`/`train`: Ray Tune runs the trials, the Optuna study decides what to try.

Layout under the workflow's `run_dir`:
  sweep/study.db       Optuna study: the source of truth for which trials exist and how they ended
  sweep/trials/trial-NNNN/  Ray Train runs named by Optuna number (checkpoints; resumable)
  sweep/tune/          Ray Tune's bookkeeping for the current attempt (replaced on --resume)
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lepton_ray import metrics
from lepton_ray.checkpoints import is_storage_full, load_safe
from lepton_ray.config import SearchSpace, WorkflowConfig, apply_overrides, parse_workflow
from lepton_ray.errors import ConfigError
from lepton_ray.search import NUMBER_KEY, StudySearcher, finished_count, open_study, sweep_id
from lepton_ray.sessions import CHECKPOINT_PATH_KEY
from lepton_ray.trial import STUDENT_FILE

if TYPE_CHECKING:
    from lepton_ray.train import TrialInputs

TRIAL_DRIVER_CPU = 0.01
"""Tune's per-trial driver only waits on its TorchTrainer; 0 is rejected by Ray, 1 deadlocks 2-CPU nodes."""


@dataclass(frozen=True)
class SweepPaths:
    root: Path

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def study(self) -> Path:
        return self.root / "study.db"

    def key(self, sweep_id: str) -> str:
        """MLflow key of the sweep's parent run: a resumed sweep finds its run by it, while a sweep
        started over in the same folder (a new study, so a new `sweep_id`) gets new runs."""
        return f"sweep:{self.root.resolve()}#{sweep_id}"


def trial_run_name(number: int) -> str:
    return f"trial-{number:04d}"


def newest_student_file(run_folder: Path) -> Path | None:
    """The shipped student of a finished trial run (its last checkpoint holds it); None if it did not finish."""
    return max(Path(run_folder).glob(f"*/{STUDENT_FILE}"), key=lambda path: path.parent.name, default=None)


def finished_trial_metrics(run_folder: Path) -> dict[str, Any] | None:
    """Final metrics of a trial run that already completed."""
    student_file = newest_student_file(run_folder)
    if student_file is None:
        return None
    payload = load_safe(student_file, "student checkpoint")
    return {**payload.get("metrics", {}), CHECKPOINT_PATH_KEY: str(student_file.parent)}


def trial_driver(config: dict[str, Any], base_workflow: dict[str, Any], inputs: "TrialInputs", trials_root: str) -> None:
    """Tune function trainable: one Optuna trial = one run under `trials/` named by its number.

    Several workers: a `TorchTrainer` (real DDP). One worker: the same loop in this actor
    (`sessions.InProcessSession`), which saves a Ray Train start-up per trial.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from lepton_ray.sessions import InProcessSession
    from lepton_ray.train import build_trainer, raise_if_diverged
    from lepton_ray.trial import run_trial

    overrides = {key: value for key, value in config.items() if key != NUMBER_KEY}
    wf = parse_workflow(apply_overrides(base_workflow, overrides))
    name = trial_run_name(config[NUMBER_KEY])
    already = finished_trial_metrics(Path(trials_root) / name)
    if already is not None:
        tune.report(already)
        return
    try:
        if runs_in_process(wf):
            session = InProcessSession(Path(trials_root) / name, on_report=tune.report)
            run_trial(inputs.loop_config(wf), session)
            final_metrics = session.last_metrics
        else:
            final_metrics = build_trainer(wf, inputs, Path(trials_root), name, [TuneReportCallback()]).fit().metrics or {}
    except Exception as err:
        if not is_storage_full(err):
            raise
        tune.report({metrics.STORAGE_FULL: 1})  # the searcher leaves the trial to --resume; the driver stops the sweep
        return
    raise_if_diverged(final_metrics)


def runs_in_process(wf: WorkflowConfig) -> bool:
    return wf.resources.num_workers == 1


def trial_resources(wf: WorkflowConfig) -> dict[str, float]:
    """What Tune reserves for a trial's actor: the whole worker when it trains in-process, else a sliver
    (the `TorchTrainer` reserves its workers itself)."""
    if not runs_in_process(wf):
        return {"cpu": TRIAL_DRIVER_CPU}
    return {"cpu": wf.resources.cpus_per_worker, **({"gpu": wf.resources.gpus_per_worker} if wf.resources.use_gpu else {})}


@dataclass
class SweepOutcome:
    parent_run_id: str
    paths: SweepPaths
    trials: Any
    """pandas DataFrame: one row per trial, as in the leaderboard."""
    teacher_accuracy: float
    selection: Any = None


def sweep_paths(wf: WorkflowConfig, single: bool) -> SweepPaths:
    return SweepPaths(wf.run_dir / (f"train-{time.strftime('%Y%m%d-%H%M%S')}" if single else "sweep"))


def check_storage(paths: SweepPaths, resume: bool) -> None:
    if resume and not paths.study.is_file():
        raise ConfigError(f"--resume: no sweep to resume under {paths.root}; run without --resume to start one")
    if not resume and paths.study.is_file():
        raise ConfigError(f"sweep: {paths.root} already holds a sweep; pass --resume to continue it, or delete the folder to start over")


def run_sweep(
    wf: WorkflowConfig,
    space: SearchSpace | None,
    resume: bool = False,
    address: str | None = None,
    select_and_export: bool = False,
    log: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run (or resume) the workflow's sweep; with no search space, one trial of the workflow as written."""
    from lepton_ray.data import build_data
    from lepton_ray.leaderboard import format_table
    from lepton_ray.teacher import prepare_teachers
    from lepton_ray.tracking import Tracker, check_reachable, redact, tracking_uri
    from lepton_ray.train import lineage_tags

    paths = sweep_paths(wf, single=space is None)
    check_storage(paths, resume)
    uri = tracking_uri(wf.tracking.uri)
    check_reachable(uri)
    data = build_data(wf.data)
    teachers = prepare_teachers(wf, data, log)
    num_samples = wf.sweep.num_samples if space is not None else 1
    tracker = Tracker(uri, wf.tracking.experiment)
    study = open_study(paths.root, wf.sweep)
    sweep_key = paths.key(sweep_id(study))
    tags = lineage_tags(wf, teachers)
    shared_workflow = apply_overrides(wf.to_dict(), {"tracking.uri": redact(uri)})  # trials never write to MLflow: no credentials
    parent_run_id = tracker.start_run(sweep_key, f"{wf.name}-{paths.root.name}", shared_workflow, {**tags, "lepton.kind": "sweep"})
    tracker.log_metrics(parent_run_id, {metrics.TEACHER_TEST_ACCURACY: teachers[0].test_accuracy})
    if resume:
        close_runs_left_open(tracker, parent_run_id, study, paths, log)
    remaining = num_samples - finished_count(study)
    log(f"sweep {paths.root}: {num_samples - remaining}/{num_samples} trials already finished; MLflow {redact(uri)}, experiment {wf.tracking.experiment!r}")
    if remaining > 0:
        _run_tuner(wf, shared_workflow, space, paths, study, remaining, teachers, data, tracker, parent_run_id, sweep_key, tags, address, log)
    trials = _read_trials(tracker, parent_run_id, wf, paths)
    log(format_table(trials, wf.sweep.cost_metric))
    outcome = SweepOutcome(parent_run_id, paths, trials, teachers[0].test_accuracy)
    try:
        if select_and_export:
            from lepton_ray.publish import select_export_publish

            outcome.selection = select_export_publish(wf, outcome, data, tracker, log)
    except Exception as err:
        tracker.finish(parent_run_id, "FAILED", error=f"{type(err).__name__}: {err}")
        tracker.report_unlogged()
        raise
    tracker.finish(parent_run_id, "FINISHED")
    tracker.report_unlogged()
    log(f"MLflow: {tracker.run_url(parent_run_id)}  (browse: mlflow ui --backend-store-uri {redact(uri)})")
    return outcome


def close_runs_left_open(tracker, parent_run_id: str, study, paths: SweepPaths, log: Callable[[str], None]) -> None:
    """A driver killed between Tune's searcher and its callbacks leaves finished trials' runs RUNNING: close them."""
    from lepton_ray.tracking import PENDING_PREFIX
    from lepton_ray.tune_callbacks import close_runs_of_finished_trials

    if parent_run_id.startswith(PENDING_PREFIX):
        return  # MLflow is down: nothing to read; the runs stay as they are until the next --resume
    finished = {t.number: t.state.name for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    closed = close_runs_of_finished_trials(
        tracker, parent_run_id, finished, lambda number: finished_trial_metrics(paths.trials / trial_run_name(number)),
    )
    if closed:
        log(f"closed the MLflow runs of trials {closed}: they had finished before the last driver stopped")


def _read_trials(tracker, parent_run_id: str, wf: WorkflowConfig, paths: SweepPaths):
    """The leaderboard from MLflow; an unreachable server is one clear line (the trials are safe on disk)."""
    from lepton_ray.errors import TrackingError
    from lepton_ray.leaderboard import trials_frame
    from lepton_ray.tracking import redact

    try:
        return trials_frame(tracker, parent_run_id, wf.sweep.cost_metric)
    except Exception as err:  # MLflow raises several types for a server that went away
        tracker.report_unlogged()
        raise TrackingError(
            f"tracking.uri: cannot read the sweep's runs back from {redact(tracker.uri)} ({type(err).__name__}); the trials are complete "
            f"under {paths.root}: bring MLflow back and run the same command with --resume to read them back and select"
        ) from None


def _run_tuner(wf, shared_workflow, space, paths, study, remaining, teachers, data, tracker, parent_run_id, sweep_key, tags, address, log) -> None:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from lepton_ray.ray_runtime import init_ray
    from lepton_ray.train import put_trial_inputs
    from lepton_ray.tune_callbacks import MlflowTrialLogger, SweepProgress

    init_ray(address)
    if paths.tune.exists():
        shutil.rmtree(paths.tune)  # bookkeeping of an interrupted attempt; the study and trial runs are kept
    trainable = tune.with_parameters(
        trial_driver,
        base_workflow=shared_workflow,
        inputs=put_trial_inputs(wf, teachers, data, paths.root, log),
        trials_root=str(paths.trials.resolve()),
    )
    scheduler = (
        ASHAScheduler(time_attr=metrics.EPOCH, metric=metrics.VAL_ACCURACY, mode="max", max_t=wf.training.epochs, grace_period=max(1, wf.training.epochs // 3))
        if wf.sweep.scheduler == "asha"
        else FIFOScheduler()
    )
    callbacks = [
        MlflowTrialLogger(tracker, parent_run_id, sweep_key, shared_workflow, tags, {metrics.TEACHER_TEST_ACCURACY: teachers[0].test_accuracy}),
        SweepProgress(wf.sweep.num_samples if space is not None else 1, (wf.sweep.num_samples if space else 1) - remaining, wf.sweep.cost_metric, log=log),
    ]
    searcher = StudySearcher(study, space, wf.sweep)
    tuner = tune.Tuner(
        tune.with_resources(trainable, trial_resources(wf)),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=remaining,
            max_concurrent_trials=wf.resources.max_concurrent_trials,
            reuse_actors=True,  # a warm trial actor keeps torch and the package imported between trials
        ),
        run_config=tune.RunConfig(
            name=paths.tune.name, storage_path=str(paths.root.resolve()), callbacks=callbacks, verbose=0,
            # In-process trials restart through Tune (from their own checkpoints); DDP trials through Ray Train.
            failure_config=tune.FailureConfig(max_failures=wf.resources.max_failures if runs_in_process(wf) else 0),
        ),
    )
    results = tuner.fit()
    if searcher.storage_full or any((result.metrics or {}).get(metrics.STORAGE_FULL) for result in results):
        from lepton_ray.errors import StorageFullError

        tracker.finish(parent_run_id, "KILLED", error="storage full; continue with --resume")
        raise StorageFullError(
            f"storage: no space left under {paths.root}; completed trials and checkpoints are intact; free space (or set output_dir "
            "to a larger volume) and run the same command with --resume"
        )
