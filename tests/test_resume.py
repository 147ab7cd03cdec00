"""A sweep whose driver is SIGKILLed mid-run, or whose Ray cluster is stopped under it, resumes to exactly
num_samples trials, nothing twice."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from lepton_ray.config import load_workflow
from lepton_ray.tracking.tracker import PARENT_TAG, Tracker

from conftest import study_states
from test_sweep import TINY

REPO = Path(__file__).resolve().parents[1]


OWNER_VAR = "LEPTON_TEST_OWNER"
"""Set in the drivers this test starts; Ray's daemons and workers inherit it, so the test kills only its own."""


def _owned(marker: str) -> list[int]:
    owned = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                if f"{OWNER_VAR}={marker}".encode() in Path(f"/proc/{name}/environ").read_bytes().split(b"\0"):
                    owned.append(int(name))
            except OSError:
                pass  # gone, or not ours to read
    return owned


def _kill_owned(marker: str, timeout_s: float = 60, spare: int | None = None) -> None:
    """Ray daemons the killed driver started (they can outlive it): killed until none is left, nothing else
    (a benchmark or another test's Ray on the same machine keeps running); `spare`: a pid left alive."""
    deadline = time.monotonic() + timeout_s
    while (pids := [pid for pid in _owned(marker) if pid != spare]) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def _sweep_command(workflow: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lepton_ray.cli", "sweep", str(workflow), "--no-export", *extra]


def _start_sweep(write_workflow, tmp_path: Path, num_samples: int):
    """A sweep driver in its own session, logging to driver.log, its Ray processes marked as this test's.
    Single-worker trials (they train in their Tune actors) keep it under a minute; a DDP worker's restart
    from its checkpoint is tests/test_faults.py."""
    slower = {"training.epochs": 6, "data.options": {"num_samples": 1200, "image_size": 8}, "resources.num_workers": 1}
    workflow = write_workflow({**TINY, **slower, "sweep.num_samples": num_samples})
    wf = load_workflow(workflow)
    marker = secrets.token_hex(8)
    env = {**os.environ, "PYTHONPATH": str(REPO), OWNER_VAR: marker}
    driver_log = tmp_path / "driver.log"
    with driver_log.open("w") as log:
        driver = subprocess.Popen(_sweep_command(workflow), cwd=tmp_path, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    return workflow, wf, wf.run_dir / "sweep" / "study.db", marker, env, driver, driver_log


def _wait_for_a_finished_and_a_running_trial(study_db: Path, driver: subprocess.Popen, driver_log: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        states = study_states(study_db)
        if states.count("COMPLETE") >= 1 and "RUNNING" in states:
            return
        assert driver.poll() is None, f"the sweep ended before it could be interrupted:\n{driver_log.read_text()[-3000:]}"
        time.sleep(0.2)
    pytest.fail(f"no trial completed in time: {study_states(study_db)}")


def _resume_to_exactly(num_samples: int, workflow: Path, wf, study_db: Path, env: dict, marker: str, tmp_path: Path) -> str:
    """`sweep --resume` exits 0 and leaves exactly `num_samples` trials and runs (`_assert_resumed_to_exactly`); its console."""
    try:
        resumed = subprocess.run(_sweep_command(workflow, "--resume"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    finally:
        _kill_owned(marker)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_resumed_to_exactly(num_samples, wf, study_db)
    return resumed.stdout + resumed.stderr


def _assert_resumed_to_exactly(num_samples: int, wf, study_db: Path) -> None:
    """N complete trials, N trial folders, one sweep run with N finished child runs (none left RUNNING)."""
    assert study_states(study_db) == ["COMPLETE"] * num_samples
    trial_dirs = sorted(p.name for p in (wf.run_dir / "sweep" / "trials").iterdir() if p.is_dir())
    assert trial_dirs == [f"trial-{n:04d}" for n in range(num_samples)]
    tracker = Tracker(wf.tracking.uri, wf.tracking.experiment)
    sweeps = mlflow.search_runs(experiment_ids=[tracker.experiment_id], filter_string="tags.`lepton.kind` = 'sweep'")
    assert len(sweeps) == 1 and set(sweeps["status"]) == {"FINISHED"}
    children = mlflow.search_runs(experiment_ids=[tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{sweeps.run_id[0]}'")
    assert sorted(children["tags.optuna_trial"].astype(int)) == list(range(num_samples))
    assert set(children["status"]) == {"FINISHED"}


@pytest.mark.ray
def test_a_sweep_whose_ray_cluster_is_stopped_says_so_in_one_line_and_resumes_to_exactly_num_samples(write_workflow, tmp_path):
    """As `ray stop` in another shell would: every Ray process of the driver's local cluster killed, the driver kept."""
    num_samples = 3
    workflow, wf, study_db, marker, env, driver, driver_log = _start_sweep(write_workflow, tmp_path, num_samples)
    try:
        _wait_for_a_finished_and_a_running_trial(study_db, driver, driver_log)
        _kill_owned(marker, spare=driver.pid)
        code = driver.wait(timeout=50)  # Ray's own driver would wait 60 s for its GCS, then end without a word from us
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        _kill_owned(marker)
    lines = [line for line in driver_log.read_text().splitlines() if line.startswith("lepton-ray: error: ")]
    assert code == 1 and len(lines) == 1, driver_log.read_text()[-3000:]
    assert re.match(r"lepton-ray: error: the Ray cluster at \S+:\d+ went away mid-sweep .* run the same command with --resume", lines[0]), lines[0]
    assert driver_log.read_text().rstrip().endswith(lines[0]), "the last word is lepton-ray's"
    for noise in ("Token authentication is enabled", " INFO mlflow", "Downloading artifacts"):
        assert noise not in driver_log.read_text(), f"library notice on the console: {noise}"

    _resume_to_exactly(num_samples, workflow, wf, study_db, env, marker, tmp_path)


@pytest.mark.ray
def test_killed_driver_resumes_to_exactly_num_samples_with_one_run_per_trial(write_workflow, tmp_path):
    num_samples = 3
    workflow, wf, study_db, marker, env, driver, driver_log = _start_sweep(write_workflow, tmp_path, num_samples)
    try:
        _wait_for_a_finished_and_a_running_trial(study_db, driver, driver_log)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        _kill_owned(marker)
    interrupted = study_states(study_db)
    assert "RUNNING" in interrupted and len(interrupted) < num_samples + 1

    console = _resume_to_exactly(num_samples, workflow, wf, study_db, env, marker, tmp_path)
    first_status = next(line for line in console.splitlines() if line.startswith("[sweep] "))
    assert re.search(r"best \S+ 0\.\d{4} \| front size [1-9]", first_status), f"trials finished before the resume count: {first_status}"
    tracker = Tracker(wf.tracking.uri, wf.tracking.experiment)
    sweeps = mlflow.search_runs(experiment_ids=[tracker.experiment_id], filter_string="tags.`lepton.kind` = 'sweep'")
    # Logged when the resumed driver trained anything (not when the interrupted trials had already finished on disk).
    trained = sweeps.get("metrics.epochs_trained", [0.0])[0]
    redone = sweeps.get("metrics.epochs_redone", [0.0])[0]
    assert redone <= 0.10 * trained, f"epochs redone after the resume: {redone} of {trained}"
