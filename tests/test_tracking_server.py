"""Shared tracking: a sweep logs to a real `mlflow server` over HTTP, artifacts included, and the
leaderboard reads it back; an unreachable server stops a sweep before anything runs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lepton_ray import metrics
from lepton_ray.checks import check_workflow
from lepton_ray.cli import main
from lepton_ray.config import load_workflow
from lepton_ray.errors import TrackingError
from lepton_ray.sweep.runner import run_sweep
from lepton_ray.tracking.tracker import PARENT_TAG
from lepton_ray.tracking.uris import check_reachable
from lepton_ray.trial.files import STUDENT_FILE

from test_jobs import free_port
from test_sweep import TINY

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("given_by", ["workflow", "environment"])
def test_unreachable_tracking_server_stops_the_sweep_before_anything_runs(write_workflow, monkeypatch, capsys, given_by):
    uri = f"http://127.0.0.1:{free_port()}"
    if given_by == "environment":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    path = write_workflow({**TINY, **({"tracking.uri": uri} if given_by == "workflow" else {})})
    wf = load_workflow(path)

    code = main(["sweep", str(path), "--no-export"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.splitlines() == [err]
    assert err.startswith(f"lepton-ray: error: tracking.uri: cannot reach MLflow at {uri}")
    assert not Path(wf.teacher.checkpoint).exists(), "no teacher was trained"
    assert not wf.run_dir.exists(), "no sweep storage or study was created"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def start_server(port: int, store: Path, backend_uri: str | None = None, workers: int = 1) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:`port` with a database (default: SQLite under `store`) and proxied artifacts
    under `store`; returns once /health answers."""
    command = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--backend-store-uri", backend_uri or f"sqlite:///{store / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", str(store / "artifacts"),
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with (store / "server.log").open("a") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started = time.monotonic()
    while True:
        try:
            check_reachable(f"http://127.0.0.1:{port}", timeout_s=1.0)
            print(f"mlflow server up in {time.monotonic() - started:.1f}s")
            return server
        except TrackingError:
            if server.poll() is not None or time.monotonic() - started > 90:
                stop_server(server)
                raise AssertionError((store / "server.log").read_text()[-3000:]) from None
            time.sleep(0.3)


def stop_server(server: subprocess.Popen) -> None:
    """End the server's whole process group and check that none of it is left."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    deadline = time.monotonic() + 10
    while group_members(server.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert group_members(server.pid) == [], "processes of our mlflow server are still running"


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 with a SQLite store and proxied artifacts (`mlflow-artifacts:/`)."""
    store = tmp_path / "server"
    store.mkdir()
    port = free_port()
    server = start_server(port, store)
    try:
        yield f"http://127.0.0.1:{port}", store
    finally:
        stop_server(server)


@pytest.mark.mlflow_server
@pytest.mark.ray
def test_sweep_logs_to_an_mlflow_server_and_the_leaderboard_reads_it_back_over_http(mlflow_server, ray_session, write_workflow, tmp_path):
    uri, store = mlflow_server
    path = write_workflow({**TINY, "sweep.num_samples": 2, "resources.num_workers": 1, "tracking.uri": uri, "tracking.experiment": "shared"})
    wf = load_workflow(path)
    started = time.monotonic()
    outcome = run_sweep(wf, check_workflow(wf), log=lambda _: None)
    print(f"sweep against the server took {time.monotonic() - started:.1f}s")

    board_file = tmp_path / "board.json"
    assert main(["leaderboard", "--tracking-uri", uri, "--experiment", "shared", "--json", str(board_file)]) == 0
    board = {row["run_id"]: row[metrics.TEST_ACCURACY] for row in json.loads(board_file.read_text())}

    with sqlite3.connect(store / "mlflow.db") as db:  # the server's own store, read without MLflow
        stored = dict(db.execute(
            "SELECT m.run_uuid, m.value FROM latest_metrics m JOIN tags t ON t.run_uuid = m.run_uuid "
            "WHERE t.key = ? AND t.value = ? AND m.key = ?",
            (PARENT_TAG, outcome.parent_run_id, metrics.TEST_ACCURACY),
        ).fetchall())
        artifact_uris = [row[0] for row in db.execute("SELECT artifact_uri FROM runs WHERE run_uuid IN (%s)" % ",".join("?" * len(stored)), list(stored))]
    assert len(stored) == 2
    assert board == pytest.approx(stored)
    assert all(artifact_uri.startswith("mlflow-artifacts:/") for artifact_uri in artifact_uris), artifact_uris
    assert len(list((store / "artifacts").rglob(f"student/{STUDENT_FILE}"))) == 2, "each trial's student went through the server"
    assert not (tmp_path / "mlflow.db").exists(), "nothing was written to the local default store"
