"""A really full disk (a 1 MiB tmpfs) under a sweep: one clear line, the study intact, --resume completes.

The unit tests inject ENOSPC; this one fills a real device, which found errors that carry no errno
(torch.save: "unexpected pos", "iostream error"; SQLite: "database or disk is full").
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lepton_ray.config import load_workflow

from conftest import study_states
from test_sweep import TINY

REPO = Path(__file__).resolve().parents[1]
FREE_BYTES = 464 * 1024
"""Left free before the sweep: a 6-trial sweep of this workflow needs about 850 KB, its first trials fit."""


@pytest.fixture
def small_device(tmp_path: Path):
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("needs permission to mount a tmpfs (root with CAP_SYS_ADMIN); ENOSPC is injected in test_checkpoints/test_search")
    try:
        yield mount
    finally:
        _unmount(mount)


def _unmount(mount: Path, wait_s: float = 5.0) -> None:
    """Ray's worker processes of the finished sweeps keep their working folder on the device for a few
    seconds after the driver exits; wait for them, then detach lazily rather than leave a mount behind."""
    deadline = time.monotonic() + wait_s
    while subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            subprocess.run(["umount", "-l", str(mount)], check=True)
            return
        time.sleep(0.5)


@pytest.mark.ray
def test_a_sweep_on_a_full_device_stops_with_one_line_and_resumes_once_space_is_freed(small_device, write_workflow, tmp_path):
    workflow = write_workflow({**TINY, "output_dir": str(small_device / "runs"), "training.epochs": 3, "sweep.num_samples": 6, "resources.num_workers": 1})
    wf = load_workflow(workflow)
    filler = small_device / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_device).free - FREE_BYTES))
    command = [sys.executable, "-m", "lepton_ray.cli", "sweep", str(workflow), "--no-export"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    full = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 2, full.stderr[-3000:]
    # Ray's own log lines (its pyarrow sync traceback, raylet warnings) may come before or after ours
    ours = [line for line in full.stderr.splitlines() if line.startswith("lepton-ray: error:")]
    assert len(ours) == 1 and ours[0].startswith("lepton-ray: error: storage: no space left under "), full.stderr[-3000:]
    assert re.search(r"\(0 failed, 0 pruned, [1-9] interrupted \(storage full\)\)", full.stdout), "progress counts them as interrupted, not pruned"
    study_db = wf.run_dir / "sweep" / "study.db"
    interrupted = study_states(study_db)
    assert "COMPLETE" in interrupted and "RUNNING" in interrupted and len(interrupted) < 6, interrupted

    filler.unlink()
    resumed = subprocess.run([*command, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert study_states(study_db) == ["COMPLETE"] * 6
    assert sorted(p.name for p in (wf.run_dir / "sweep" / "trials").iterdir()) == [f"trial-{n:04d}" for n in range(6)]
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        runs = db.execute("SELECT name, status FROM runs WHERE name LIKE 'trial-%' ORDER BY name").fetchall()
    assert runs == [(f"trial-{n:04d}", "FINISHED") for n in range(6)], "one finished MLflow run per trial"
