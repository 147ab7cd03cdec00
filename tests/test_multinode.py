"""Several nodes: a sweep on a Ray cluster of a head and 3 worker nodes (separate raylets on this machine,
`ray.cluster_utils.Cluster`), one worker node removed while a trial trains on it; two sweeps at once on it,
both logging to one MLflow server backed by PostgreSQL (tracking at team scale).

The trials' folders and the study sit in one local folder every node reads: on one machine that is
the shared storage a real cluster needs (NFS or a bucket) for a trial to resume on another node.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import optuna
import pytest

from lepton_ray import metrics
from lepton_ray.cluster.local_nodes import local_nodes
from lepton_ray.config import load_workflow
from lepton_ray.sweep.api import check_run
from lepton_ray.sweep.callbacks import NODES_TAG
from lepton_ray.sweep.runner import run_sweep
from lepton_ray.tracking.tracker import PARENT_TAG, Tracker

from conftest import REPO, study_states
from postgres_server import missing, postgres_database
from test_jobs import free_port
from test_sweep import TINY
from test_tracking_server import start_server, stop_server

WORKER_NODES = 3
ON_THE_CLUSTER = {
    "resources.num_workers": 1,  # in-process trials: one trial actor with 1 CPU fills one worker node
    "resources.cpus_per_worker": 1,
    "resources.max_concurrent_trials": WORKER_NODES,
    "resources.max_failures": 1,
}


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPU (the sweep's driver joins it; no trial lands there) and 3 one-CPU worker nodes."""
    with local_nodes(WORKER_NODES) as nodes:
        yield nodes


def running_trial_nodes(mlflow_db: Path, min_epoch: int) -> dict[str, str]:
    """Node id -> run id of RUNNING trial runs that reported at least `min_epoch` epochs (read-only)."""
    if not mlflow_db.exists():
        return {}
    query = (
        "SELECT t.value, r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = ? "
        "JOIN latest_metrics m ON m.run_uuid = r.run_uuid AND m.key = ? WHERE r.status = 'RUNNING' AND m.value >= ?"
    )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True, timeout=10)) as db:
            return {nodes.split(",")[-1]: run_id for nodes, run_id in db.execute(query, (NODES_TAG, metrics.EPOCH, min_epoch))}
    except sqlite3.OperationalError:  # tables not created yet
        return {}


def remove_a_busy_node(cluster, mlflow_db: Path, removed: list, stop: threading.Event) -> None:
    """Once a trial on a worker node has checkpointed an epoch (its run shows epoch >= 1), remove that node."""
    workers = {node.node_id: node for node in cluster.worker_nodes}
    while not stop.is_set():
        busy = {node_id: run_id for node_id, run_id in running_trial_nodes(mlflow_db, 1).items() if node_id in workers}
        if busy:
            node_id, run_id = next(iter(busy.items()))
            cluster.remove_node(workers[node_id])
            removed.append((node_id, run_id))
            return
        time.sleep(0.2)


@pytest.mark.ray
def test_trials_spread_over_nodes_and_a_removed_node_s_trial_resumes_elsewhere_in_its_own_run(cluster, write_workflow, tmp_path):
    num_samples = 5
    epochs = 12
    longer = {"training.epochs": epochs, "data.options": {"num_samples": 1200, "image_size": 8}}
    wf = load_workflow(write_workflow({**TINY, **ON_THE_CLUSTER, **longer, "sweep.num_samples": num_samples}))
    space = check_run(wf, cluster.address, "address")
    removed: list[tuple[str, str]] = []
    stop = threading.Event()
    remover = threading.Thread(target=remove_a_busy_node, args=(cluster, tmp_path / "mlflow.db", removed, stop), daemon=True)
    remover.start()
    try:
        outcome = run_sweep(wf, space, address=cluster.address, log=print)
    finally:
        stop.set()
        remover.join()
        cluster.add_node(num_cpus=1)  # back to 3 worker nodes for the next test of this module
    assert removed, "no worker node was removed: every trial ended before one had checkpointed an epoch"
    lost_node, interrupted_run = removed[0]

    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{outcome.paths.study}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * num_samples
    tracker = Tracker(wf.tracking.uri, wf.tracking.experiment)
    runs = mlflow.search_runs(experiment_ids=[tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'")
    assert len(runs) == num_samples, "one run per trial, no duplicate for the retried one"
    assert set(runs["status"]) == {"FINISHED"}, "no run left RUNNING"
    assert tracker.client.get_run(outcome.parent_run_id).info.status == "FINISHED"

    nodes_of = dict(zip(runs["run_id"], runs[f"tags.{NODES_TAG}"].str.split(",")))
    assert len({node for nodes in nodes_of.values() for node in nodes}) >= 2, f"trials ran on one node only: {nodes_of}"
    retried = nodes_of[interrupted_run]
    assert retried[0] == lost_node and len(retried) == 2 and retried[1] != lost_node, f"resumed on another node: {retried}"
    history = sorted(tracker.client.get_metric_history(interrupted_run, metrics.EPOCH), key=lambda m: m.timestamp)
    epochs_seen = [int(m.value) for m in history]
    restarts = [int(m.value) for m in sorted(tracker.client.get_metric_history(interrupted_run, metrics.RESTARTS), key=lambda m: m.timestamp)]
    assert restarts[-1] == 1, f"the run shows the restart: epochs {epochs_seen}, restarts {restarts}"
    assert epochs_seen.count(1) == 1 and epochs_seen[-1] == epochs, f"resumed from its checkpoint, not from scratch: {epochs_seen}"


@pytest.fixture
def postgres_mlflow(tmp_path):
    """An MLflow server (2 workers) whose backend store is a throwaway PostgreSQL database; yields its URI and database URI."""
    why = missing()
    if why:
        pytest.skip(why)
    store = tmp_path / "server"
    store.mkdir()
    with postgres_database(free_port()) as database_uri:
        port = free_port()
        server = start_server(port, store, backend_uri=database_uri, workers=2)
        try:
            yield f"http://127.0.0.1:{port}", database_uri
        finally:
            stop_server(server)


def runs_in_database(database_uri: str, experiment: str) -> dict[str, list[str]]:
    """Parent run id -> statuses of its child runs, read from PostgreSQL itself (not through MLflow)."""
    import psycopg

    query = (
        "SELECT t.value, r.status FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
        "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = %s WHERE e.name = %s"
    )
    children: dict[str, list[str]] = {}
    with psycopg.connect(database_uri) as db:
        for parent, status in db.execute(query, (PARENT_TAG, experiment)).fetchall():
            children.setdefault(parent, []).append(status)
    return children


@pytest.mark.ray
@pytest.mark.mlflow_server
def test_two_sweeps_on_the_cluster_log_at_once_to_an_mlflow_server_backed_by_postgresql(cluster, postgres_mlflow, write_workflow, tmp_path):
    from lepton_ray.data.datasets import build_data
    from lepton_ray.trial.teacher import prepare_teachers

    uri, database_uri = postgres_mlflow
    shared = {**TINY, **ON_THE_CLUSTER, "training.epochs": 3, "tracking.uri": uri, "tracking.experiment": "team"}
    trials = {"alice": 3, "bob": 6}  # bob's sweep starts first and has more to do, so alice's runs while it does
    paths = {name: write_workflow({**shared, "output_dir": str(tmp_path / name), "sweep.num_samples": count}, name=f"{name}.yaml") for name, count in trials.items()}
    alice, bob = load_workflow(paths["alice"]), load_workflow(paths["bob"])
    prepare_teachers(alice, build_data(alice.data), log=print)  # one teacher file both sweeps find already trained
    bob_log = tmp_path / "bob.log"
    with bob_log.open("w") as log:
        other = subprocess.Popen(
            [sys.executable, "-m", "lepton_ray.cli", "sweep", str(paths["bob"]), "--no-export", "--address", cluster.address],
            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        while "RUNNING" not in study_states(bob.run_dir / "sweep" / "study.db"):  # bob's trials are running: start alice's sweep
            assert other.poll() is None, bob_log.read_text()[-3000:]
            time.sleep(0.2)
        outcome = run_sweep(alice, check_run(alice, cluster.address, "address"), address=cluster.address, log=print)
        assert other.wait(timeout=600) == 0, bob_log.read_text()[-3000:]
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()

    children = runs_in_database(database_uri, "team")
    assert len(children) == 2, f"two sweep runs in the database: {list(children)}"
    assert sorted(len(statuses) for statuses in children.values()) == sorted(trials.values()), "one run per trial of each sweep"
    assert {status for statuses in children.values() for status in statuses} == {"FINISHED"}, children
    tracker = Tracker(uri, "team")
    parents = [tracker.client.get_run(parent).info for parent in children]
    assert {run.status for run in parents} == {"FINISHED"}
    assert max(run.start_time for run in parents) < min(run.end_time for run in parents), "the two sweeps wrote at the same time"
    assert outcome.parent_run_id in children and len(outcome.trials) == trials["alice"]
