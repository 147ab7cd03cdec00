"""A fault a real cluster has: a DDP worker killed mid-trial."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import optuna
import pytest

from lepton_ray import metrics
from lepton_ray.checkpoints import load_safe
from lepton_ray.checks import check_workflow
from lepton_ray.config import load_workflow
from lepton_ray.errors import CheckpointError
from lepton_ray.sweep.runner import run_sweep
from lepton_ray.tracking.tracker import PARENT_TAG, Tracker
from lepton_ray.trial.files import TRIAL_STATE_FILE

from test_sweep import TINY

WORKER_TITLE = b"ray::RayTrainWorker"


def _train_worker_pids() -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if Path(f"/proc/{name}/cmdline").read_bytes().startswith(WORKER_TITLE):
                    pids.append(int(name))
            except OSError:
                pass
    return sorted(pids)


def _checkpointed_epochs(trial_folder: Path) -> int:
    """Epochs covered by the newest readable checkpoint on disk (0 before the first)."""
    done = 0
    for state_file in trial_folder.glob(f"checkpoint_*/{TRIAL_STATE_FILE}"):
        try:
            done = max(done, int(load_safe(state_file)["next_epoch"]))
        except (CheckpointError, KeyError):
            pass  # still being written
    return done


def _kill_one_worker_after_a_checkpoint(trial_folder: Path, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL one DDP worker once 5 epochs are checkpointed (as a lost node would)."""
    while not stop.is_set():
        if _checkpointed_epochs(trial_folder) >= 5:
            workers = _train_worker_pids()
            if len(workers) == 2:

                os.kill(workers[-1], signal.SIGKILL)
                killed.append(workers[-1])
                return
        time.sleep(0.2)


@pytest.mark.ray
def test_killed_ddp_worker_restarts_the_trial_from_its_checkpoint_in_the_same_mlflow_run(ray_session, write_workflow):
    wf = load_workflow(write_workflow({**TINY, "sweep.num_samples": 1, "training.epochs": 14, "data.options": {"num_samples": 2000, "image_size": 8}, "resources.num_workers": 2, "resources.max_failures": 1}))
    trial_folder = wf.run_dir / "sweep" / "trials" / "trial-0000"
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_one_worker_after_a_checkpoint, args=(trial_folder, killed, stop), daemon=True)
    killer.start()
    try:
        outcome = run_sweep(wf, check_workflow(wf), log=lambda _: None)
    finally:
        stop.set()
        killer.join()
    assert killed, "no DDP worker was killed: the trial ended before its first checkpoint"

    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{outcome.paths.study}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    tracker = Tracker(wf.tracking.uri, wf.tracking.experiment)
    runs = mlflow.search_runs(experiment_ids=[tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'")
    assert len(runs) == 1 and runs["status"][0] == "FINISHED", "one run for the trial, not a duplicate"
    run_id = runs["run_id"][0]
    epochs = [int(m.value) for m in sorted(tracker.client.get_metric_history(run_id, metrics.EPOCH), key=lambda m: m.timestamp)]
    restarts = [int(m.value) for m in sorted(tracker.client.get_metric_history(run_id, metrics.RESTARTS), key=lambda m: m.timestamp)]
    assert restarts[-1] == 1, f"the run shows the restart: epochs {epochs}, restarts {restarts}"
    # Reports in flight when the worker died may be missing from the curve; the checkpoint on disk kept the work.
    assert epochs.count(1) == 1 and epochs[-1] == 14, f"resumed from its checkpoint (>= 5 epochs done), not from scratch: {epochs}"
    redone = len(epochs) - len(set(epochs))
    assert redone <= 2, epochs
    parent = tracker.client.get_run(outcome.parent_run_id).data.metrics
    assert parent[metrics.EPOCHS_REDONE] == redone and parent[metrics.EPOCHS_TRAINED] == len(epochs)
