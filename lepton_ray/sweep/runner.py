"""`lepton-ray sweep`/`train`: Ray Tune runs the trials, the Optuna study decides what to try.

Folder layout: `sweep/paths.py`. Each trial: `sweep/trial_driver.py`.
"""

from __future__ import annotations

import os
import shutil
from typing import Callable

from lepton_ray import metrics
from lepton_ray.cluster.ray_runtime import init_ray
from lepton_ray.config import WorkflowConfig, apply_overrides
from lepton_ray.search_space import SearchSpace
from lepton_ray.data.datasets import build_data
from lepton_ray.cluster.watch import ClusterWatch
from lepton_ray.errors import ClusterLostError, StorageFullError, TrackingError, TrialsFailedError
from lepton_ray.sweep.checks import selection_noise_warning
from lepton_ray.sweep.callbacks import MlflowTrialLogger, close_runs_of_finished_trials, error_line
from lepton_ray.sweep.paths import SweepPaths, check_storage, sweep_paths
from lepton_ray.sweep.progress import EpochLines, SweepProgress
from lepton_ray.sweep.results import SweepOutcome, select_export_publish
from lepton_ray.sweep.schedulers import make_scheduler
from lepton_ray.sweep.goal import GoalStopper, describe, met_before
from lepton_ray.sweep.search import StudySearcher
from lepton_ray.sweep.study import check_constraints_unchanged, finished_count, open_study, own_trials, sweep_id
from lepton_ray.sweep.warm_start import read_warm_start
from lepton_ray.sweep.trial_driver import runs_in_process, trial_driver, trial_resources
from lepton_ray.deploy.leaderboard import format_table, trials_frame
from lepton_ray.tracking.lineage import lineage_tags
from lepton_ray.tracking.tracker import Tracker
from lepton_ray.tracking.uris import check_reachable, redact, tracking_uri
from lepton_ray.tracking.write_queue import PENDING_PREFIX
from lepton_ray.trial.files import finished_trial_metrics, trial_run_name
from lepton_ray.trial.teacher import prepare_teachers
from lepton_ray.trial.trainer import put_trial_inputs
from lepton_ray.user_code import py_modules
from lepton_ray.console import echo


def run_sweep(
    wf: WorkflowConfig,
    space: SearchSpace | None,
    resume: bool = False,
    address: str | None = None,
    select_and_export: bool = False,
    log: Callable[[str], None] = echo,
) -> SweepOutcome:
    """Run (or resume) the workflow's sweep; with no search space, one trial of the workflow as written."""

    paths = sweep_paths(wf, single=space is None)
    check_storage(paths, resume)
    if resume:  # a config error: refused before data, teachers (maybe trained) and MLflow
        check_constraints_unchanged(open_study(paths.root, wf.sweep), wf.sweep)
    uri = tracking_uri(wf.tracking.uri)
    check_reachable(uri)
    data = build_data(wf.data)
    teachers = prepare_teachers(wf, data, log)
    for line in filter(None, [selection_noise_warning(wf, len(data.val), teachers[0].val_accuracy)]):
        log(line)
    num_samples = wf.sweep.num_samples if space is not None else 1
    tracker = Tracker(uri, wf.tracking.experiment)
    warm = read_warm_start(wf.sweep.warm_start, space, wf.sweep) if wf.sweep.warm_start and not paths.study.is_file() else None
    study = open_study(paths.root, wf.sweep, *((warm.front, warm.history) if warm else ()))
    if warm is not None:
        log(warm.describe())
    sweep_key = paths.key(sweep_id(study))
    tags = lineage_tags(wf, teachers)
    shared_workflow = apply_overrides(wf.to_dict(), {"tracking.uri": redact(uri)})  # trials never write to MLflow: no credentials
    parent_run_id = tracker.start_run(sweep_key, f"{wf.name}-{paths.root.name}", shared_workflow, {**tags, "lepton.kind": "sweep"})
    tracker.log_metrics(parent_run_id, {
        metrics.TEACHER_TEST_ACCURACY: teachers[0].test_accuracy, metrics.TEACHER_VAL_ACCURACY: teachers[0].val_accuracy,
        metrics.VAL_SAMPLES: len(data.val), metrics.TEST_SAMPLES: len(data.test),
    })
    tracker.index_children(parent_run_id)
    if resume:
        close_runs_left_open(tracker, parent_run_id, study, paths, log)
    remaining = num_samples - finished_count(study)
    log(f"sweep {paths.root}: {num_samples - remaining}/{num_samples} trials already finished; MLflow {redact(uri)}, experiment {wf.tracking.experiment!r}")
    met = met_before(study, wf.sweep.stop_when)
    if met is not None and remaining > 0:
        log(f"stop_when was met by trial {met} ({describe(wf.sweep.stop_when, wf.sweep.cost_metric)}): nothing left to run")
        remaining = 0
    failures: list[str] = []
    if remaining > 0:
        failures = _run_tuner(wf, shared_workflow, space, paths, study, remaining, teachers, data, tracker, parent_run_id, sweep_key, tags, address, log)
    trials = _read_trials(tracker, parent_run_id, wf, paths)
    log(format_table(trials, wf.sweep.cost_metric, val_samples=len(data.val)))
    outcome = SweepOutcome(parent_run_id, paths, trials, teachers[0].val_accuracy, val_samples=len(data.val))
    if remaining > 0 and len(failures) == remaining:
        what = "the trial" if space is None else f"all {remaining} trials"
        tracker.finish(parent_run_id, "FAILED", error=failures[0])
        tracker.report_unlogged()
        raise TrialsFailedError(f"{what} failed, the first with: {failures[0]} (details under {paths.trials})")
    try:
        if select_and_export:
            outcome.selection = select_export_publish(wf, outcome, data, tracker, log, lambda: teachers, address)
    except Exception as err:
        tracker.finish(parent_run_id, "FAILED", error=f"{type(err).__name__}: {err}")
        tracker.report_unlogged()
        err.outcome = outcome  # the trials finished: a caller of `lepton_ray.sweep` keeps them (see LeptonError.outcome)
        raise
    tracker.finish(parent_run_id, "FINISHED")
    tracker.report_unlogged()
    log(f"MLflow: {tracker.run_url(parent_run_id)}; review: {tracker.review_link()}")
    return outcome


def close_runs_left_open(tracker, parent_run_id: str, study, paths: SweepPaths, log: Callable[[str], None]) -> None:
    """A driver killed between Tune's searcher and its callbacks leaves finished trials' runs RUNNING: close them."""

    if parent_run_id.startswith(PENDING_PREFIX):
        return  # MLflow is down: nothing to read; the runs stay as they are until the next --resume
    finished = {t.number: t.state.name for t in own_trials(study) if t.state.is_finished()}
    closed = close_runs_of_finished_trials(
        tracker, parent_run_id, finished, lambda number: finished_trial_metrics(paths.trials / trial_run_name(number)),
    )
    if closed:
        log(f"closed the MLflow runs of trials {closed}: they had finished before the last driver stopped")


def completed_results(study, paths: SweepPaths) -> list[dict]:
    """Final metrics of the trials finished before a --resume, read from their run folders: the status line's front."""
    folders = [paths.trials / trial_run_name(t.number) for t in own_trials(study) if t.state.name == "COMPLETE"]
    return [result for result in map(finished_trial_metrics, folders) if result is not None]


def _read_trials(tracker, parent_run_id: str, wf: WorkflowConfig, paths: SweepPaths):
    """The leaderboard from MLflow; an unreachable server is one clear line (the trials are safe on disk)."""

    try:
        return trials_frame(tracker, parent_run_id, wf.sweep.cost_metric, wf.export.tolerance)
    except Exception as err:  # MLflow raises several types for a server that went away
        tracker.report_unlogged()
        raise TrackingError(
            f"tracking.uri: cannot read the sweep's runs back from {redact(tracker.uri)} ({type(err).__name__}); the trials are complete "
            f"under {paths.root}: bring MLflow back and run the same command with --resume to read them back and select"
        ) from None


TUNE_BOOKKEEPING = {
    "TUNE_GLOBAL_CHECKPOINT_S": "86400",
}
"""Tune's experiment snapshot, which lepton-ray never reads (the study and trial folders are what `--resume` restores):
it holds every trial (~28 kB each) and was rewritten every 10+ s, a cost that grew with the sweep
(`benchmarks/sweep_scale.py`: its JSON dump took 92 ms at 400 trials). Tune still writes it once at the end.
Tune's per-trial result.json/progress.csv stay on: without them Tune warns, one line per trial, that it cannot
fetch their metrics when the sweep ends. Values already in the environment win."""


def _run_tuner(wf, shared_workflow, space, paths, study, remaining, teachers, data, tracker, parent_run_id, sweep_key, tags, address, log) -> list[str]:
    """Run the trials still to run; returns one error line per trial that failed."""
    from ray import tune

    for name, value in TUNE_BOOKKEEPING.items():
        os.environ.setdefault(name, value)
    init_ray(address, py_modules(wf.user_code))
    if paths.tune.exists():
        shutil.rmtree(paths.tune)  # bookkeeping of an interrupted attempt; the study and trial runs are kept
    trainable = tune.with_parameters(
        trial_driver,
        base_workflow=shared_workflow,
        inputs=put_trial_inputs(wf, teachers, data, paths.root, log, list(space.params) if space is not None else []),
        trials_root=str(paths.trials.resolve()),
    )
    callbacks = [
        MlflowTrialLogger(tracker, parent_run_id, sweep_key, tags, {metrics.TEACHER_TEST_ACCURACY: teachers[0].test_accuracy}),
        SweepProgress(wf.sweep.num_samples if space is not None else 1, (wf.sweep.num_samples if space else 1) - remaining, wf.sweep.cost_metric, log=log,
                      max_int8_drop_points=wf.export.tolerance, earlier_results=completed_results(study, paths)),
        *([EpochLines(wf.training.epochs, log)] if space is None else []),  # `train`: one trial, so its epochs are the progress
    ]
    searcher = StudySearcher(study, space, wf.sweep)
    goal = GoalStopper(wf.sweep.stop_when, wf.sweep.cost_metric, study, searcher.live.get) if wf.sweep.stop_when else None
    if goal is not None:
        searcher.goal_met = lambda: goal.met is not None
        callbacks.append(goal)
    tuner = tune.Tuner(
        tune.with_resources(trainable, trial_resources(wf)),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=make_scheduler(wf),
            num_samples=remaining,
            max_concurrent_trials=wf.resources.max_concurrent_trials,
            reuse_actors=True,  # a warm trial actor keeps torch and the package imported between trials
        ),
        run_config=tune.RunConfig(
            name=paths.tune.name, storage_path=str(paths.root.resolve()), callbacks=callbacks, verbose=0, stop=goal,
            # In-process trials restart through Tune (from their own checkpoints); DDP trials through Ray Train.
            failure_config=tune.FailureConfig(max_failures=wf.resources.max_failures if runs_in_process(wf) else 0),
        ),
    )
    watch = ClusterWatch(f"the finished trials and every checkpoint are safe under {paths.root}: run the same command with --resume "
                         "(it starts a local cluster, or joins the one --address or RAY_ADDRESS names, once it is back)")
    with watch:
        try:
            results = tuner.fit()
        except Exception:
            if watch.lost():
                raise ClusterLostError(watch.message()) from None
            raise
    if goal is not None and goal.met is not None:
        log(goal.summary(finished_count(study), wf.sweep.num_samples))
    if searcher.storage_full or any((result.metrics or {}).get(metrics.STORAGE_FULL) for result in results):

        tracker.finish(parent_run_id, "KILLED", error="storage full; continue with --resume")
        raise StorageFullError(
            f"storage: no space left under {paths.root}; completed trials and checkpoints are intact; free space (or set output_dir "
            "to a larger volume) and run the same command with --resume"
        )
    return failure_lines(results)


def failure_lines(results) -> list[str]:
    """One line per failed trial of a Tune `ResultGrid`: an error raised, or an input error it reported (never retried)."""
    lines = []
    for result in results:
        reported = (result.metrics or {}).get(metrics.INPUT_ERROR)
        if result.error is not None or reported:
            lines.append(str(reported) if reported else error_line(result.error))
    return lines
