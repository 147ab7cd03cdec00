"""`selection.distillation_control`: the picked configuration trained again with the teacher switched off.

After selection, the pick's own workflow (read from its saved student: knobs, compression, schedule, seed) is
trained with `distillation.alpha` 0, which also keeps the teacher out of the loop (and, when
`selection.distillation_control.label_smoothing` is set, with its hard labels smoothed). With more than one seed, each
further seed trains the pick's configuration both with and without its teacher. The runs go through the sweep's
own Tune trainable (`trial_driver`: in-process or DDP, checkpoints, restarts) under
`<sweep>/control/trial-NNNN/<arm>-seed-S/`; a finished run is read back from its folder, so a resumed sweep or a
second `lepton-ray export` never trains it again. `deploy/kd_gain.py` turns the runs into the reported gain.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lepton_ray import metrics
from lepton_ray.checkpoints import load_safe
from lepton_ray.config import WorkflowConfig, parse_workflow
from lepton_ray.deploy.kd_gain import DistillationGain, SeedPair
from lepton_ray.sweep.callbacks import error_line
from lepton_ray.sweep.paths import SweepPaths
from lepton_ray.sweep.trial_driver import RUN_NAME_KEY, trial_driver, trial_resources, runs_in_process
from lepton_ray.trial.files import STUDENT_FILE, finished_trial_metrics, newest_student_file, trial_run_name
from lepton_ray.trial.trainer import put_trial_inputs

if TYPE_CHECKING:
    from lepton_ray.data.datasets import DataSplits
    from lepton_ray.trial.teacher import Teacher

RUN_KEY = "control_run"
LABELS_ONLY, WITH_TEACHER = "labels-only", "with-teacher"


def labels_only_run(seed: int, label_smoothing: float | None = None) -> str:
    """The control's run name; a smoothed control is named apart, so a control of another smoothing is never read back."""
    smoothed = "" if label_smoothing is None else f"-smoothed-{label_smoothing:g}"
    return f"{LABELS_ONLY}{smoothed}-seed-{seed}"


def with_teacher_run(seed: int) -> str:
    """The pick retrained with its teacher at a further seed."""
    return f"{WITH_TEACHER}-seed-{seed}"


def control_runs(first_seed: int, seeds: int, label_smoothing: float | None = None) -> dict[str, dict[str, Any]]:
    """Run name -> workflow overrides: labels-only at each seed (smoothed when asked), and the pick retrained at every
    seed but its own."""
    runs: dict[str, dict[str, Any]] = {}
    smoothing = {} if label_smoothing is None else {"distillation.label_smoothing": label_smoothing}
    for seed in range(first_seed, first_seed + seeds):
        runs[labels_only_run(seed, label_smoothing)] = {"distillation.alpha": 0.0, "training.seed": seed, **smoothing}
        if seed != first_seed:
            runs[with_teacher_run(seed)] = {"training.seed": seed}
    return runs


def control_folder(paths: SweepPaths, trial: int) -> Path:
    return paths.root / "control" / trial_run_name(trial)


def measure_distillation_gain(
    wf: WorkflowConfig, trial: int, paths: SweepPaths, data: "DataSplits", teachers: Callable[[], list["Teacher"]],
    address: str | None, log: Callable[[str], None],
) -> DistillationGain:
    """Train (or read back) the control runs of picked trial `trial`; a failed run is reported, never raised: the pick
    still ships. `teachers` is called only when a run with the teacher is left to train."""
    saved = newest_student_file(paths.trials / trial_run_name(trial))
    if saved is None:
        return DistillationGain(trial, skipped=f"trial {trial} has no {STUDENT_FILE} to read its configuration from")
    payload = load_safe(saved, f"trial {trial} student")
    trial_workflow = parse_workflow(payload["workflow"])
    if trial_workflow.distillation.alpha == 0:
        return DistillationGain(trial, skipped=f"trial {trial} trained without its teacher (distillation.alpha 0): there is nothing to compare")
    seeds, smoothing = wf.selection.distillation_control.seeds, wf.selection.distillation_control.label_smoothing
    runs = control_runs(trial_workflow.training.seed, seeds, smoothing)
    folder = control_folder(paths, trial)
    finished = {name: finished_trial_metrics(folder / name) for name in runs}
    to_train = [name for name, final in finished.items() if final is None]
    if to_train:
        log(f"distillation control: training trial {trial}'s configuration without its teacher ({seeds} seed{'s' if seeds > 1 else ''}; "
            f"{len(to_train)} run(s) under {folder})")
        needs_teacher = any(name.startswith(WITH_TEACHER) for name in to_train)
        failures = _train(wf, trial_workflow, {name: runs[name] for name in to_train}, paths, folder, data, teachers() if needs_teacher else [], address, log)
    else:
        failures = []
    finished |= {name: finished_trial_metrics(folder / name) for name in to_train}  # each student file read once
    pairs = []
    for seed in range(trial_workflow.training.seed, trial_workflow.training.seed + seeds):
        with_teacher = payload.get("metrics", {}) if seed == trial_workflow.training.seed else finished[with_teacher_run(seed)]
        labels_only = finished[labels_only_run(seed, smoothing)]
        if with_teacher and labels_only:
            pairs.append(SeedPair(seed, dict(with_teacher), dict(labels_only)))
    if not pairs:
        return DistillationGain(trial, skipped=f"the control run failed: {failures[0] if failures else 'no result'}", failures=tuple(failures))
    return DistillationGain(trial, tuple(pairs), failures=tuple(failures), labels_only_smoothing=smoothing)


def _train(
    wf: WorkflowConfig, trial_workflow: WorkflowConfig, runs: dict[str, dict[str, Any]], paths: SweepPaths, folder: Path, data: "DataSplits",
    teachers: list["Teacher"], address: str | None, log: Callable[[str], None],
) -> list[str]:
    """The runs through Ray Tune, as many at a time as the sweep's trials; one error line per failed run."""
    from ray import tune

    from lepton_ray.cluster.ray_runtime import init_ray
    from lepton_ray.user_code import py_modules

    init_ray(address, py_modules(wf.user_code))
    folder.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(folder / "tune", ignore_errors=True)  # Tune's bookkeeping of an interrupted attempt; finished runs are kept
    inputs = put_trial_inputs(trial_workflow, teachers, data, paths.root, log)
    trainable = tune.with_parameters(_control_driver, base_workflow=trial_workflow.to_dict(), inputs=inputs, trials_root=str(folder.resolve()))
    tuner = tune.Tuner(
        tune.with_resources(trainable, trial_resources(trial_workflow)),
        param_space={RUN_KEY: tune.grid_search([{RUN_NAME_KEY: name, **overrides} for name, overrides in runs.items()])},
        tune_config=tune.TuneConfig(max_concurrent_trials=wf.resources.max_concurrent_trials, reuse_actors=True),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(folder.resolve()), verbose=0,
            failure_config=tune.FailureConfig(max_failures=wf.resources.max_failures if runs_in_process(trial_workflow) else 0),
        ),
    )
    failures = []
    for result in tuner.fit():
        reported = (result.metrics or {}).get(metrics.INPUT_ERROR)
        if result.error is not None or reported:
            failures.append(str(reported) if reported else error_line(result.error))
    for line in failures:
        log(f"distillation control: a run failed: {line}")
    return failures


def _control_driver(config: dict[str, Any], **inputs: Any) -> None:
    """Tune trainable of one control run: the sweep's trial driver on the run's overrides."""
    trial_driver(config[RUN_KEY], **inputs)
