"""Tracking outage mid-sweep: writes are retried, queued in order while MLflow is away, replayed when it
answers again, and whatever never made it is listed at the end; nothing already logged is lost.

Fast tests inject the outage into a real SQLite store (a client whose writes raise ConnectionError
while `down`); one test stops and restarts a real `mlflow server` under the Tune callback."""

from __future__ import annotations

import sqlite3
import time
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from lepton_ray import metrics
from lepton_ray.config import load_workflow
from lepton_ray.sweep.study import NUMBER_KEY
from lepton_ray.tracking import write_queue
from lepton_ray.tracking.tracker import PARENT_TAG, STATUS_TAG, Tracker

from conftest import QUICKSTART
from test_jobs import free_port
from test_tracking_server import start_server, stop_server

WRITES = frozenset({"create_run", "log_batch", "update_run", "set_terminated", "log_artifact", "search_runs"})


class FlakyClient:
    """A real `MlflowClient` whose writes (and the run lookup a run start needs) fail while `down`,
    or when `fails(name, args)` says so."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self.down = False
        self.fails: Callable[[str, tuple], bool] = lambda name, args: False
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if name not in WRITES:
            return method

        def call(*args, **kwargs):
            if self.down or self.fails(name, args):
                self.refused += 1
                raise ConnectionError("injected: connection refused")
            return method(*args, **kwargs)

        return call


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (creating one costs seconds); each test has its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('outage') / 'mlflow.db'}"


@pytest.fixture
def flaky(store_uri: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """A Tracker with an outage switch; the health check follows the switch."""
    messages: list[str] = []
    tracker = Tracker(store_uri, request.node.name, retries=2, backoff_s=0.01, cooldown_s=0.0, warn=messages.append)
    client = FlakyClient(tracker.client)
    tracker.client = client
    monkeypatch.setattr(write_queue, "health_problem", lambda uri, timeout_s=1.0: "injected outage" if client.down else None)
    return tracker, client, messages, MlflowClient(tracking_uri=tracker.uri)


def history(store: MlflowClient, run_id: str, key: str = metrics.VAL_ACCURACY) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in store.get_metric_history(run_id, key))


def test_writes_during_an_outage_are_queued_in_order_and_replayed_when_mlflow_is_back(flaky):
    tracker, client, messages, store = flaky
    parent = tracker.start_run("sweep", "sweep", {"tracking": {"uri": "sqlite:///x.db"}}, {"lepton.kind": "sweep"})
    trial0 = tracker.start_run("sweep/trial-0000", "trial-0000", {"training": {"lr": 0.1}}, {}, parent_run_id=parent)
    tracker.log_metrics(trial0, {metrics.VAL_ACCURACY: 0.5}, step=1)

    client.down = True
    started = time.monotonic()
    tracker.log_metrics(trial0, {metrics.VAL_ACCURACY: 0.6}, step=2)
    assert client.refused == 3, "one try and two retries before queueing"
    trial1 = tracker.start_run("sweep/trial-0001", "trial-0001", {"training": {"lr": 0.2}}, {}, parent_run_id=parent)
    tracker.log_metrics(trial1, {metrics.VAL_ACCURACY: 0.3}, step=1)
    tracker.finish(trial0, "FINISHED")
    tracker.finish(trial1, "FINISHED")
    assert time.monotonic() - started < 2, "an outage stalls the caller for the retries only, never longer"
    assert client.refused == 3, "while queued writes wait, nothing new is sent to a server that is down"
    assert trial1.startswith(write_queue.PENDING_PREFIX)
    assert any("unreachable" in line and "writes are queued" in line for line in messages)
    assert tracker.unlogged() == [
        "trial-0000 (%s): metrics val_accuracy at step 2" % trial0,
        "trial-0001 (pending:sweep/trial-0001): start run (params, tags)",
        "trial-0001 (pending:sweep/trial-0001): metrics val_accuracy at step 1",
        "trial-0000 (%s): tags lepton.status" % trial0,
        "trial-0000 (%s): status FINISHED" % trial0,
        "trial-0001 (pending:sweep/trial-0001): tags lepton.status",
        "trial-0001 (pending:sweep/trial-0001): status FINISHED",
    ]
    assert history(store, trial0) == [(1, 0.5)], "what was logged before the outage is still there"

    client.down = False
    tracker.set_tags(parent, {"note": "after the outage"})

    assert tracker.unlogged() == []
    assert any("answers again; logged 7 queued write(s)" in line for line in messages)
    assert history(store, trial0) == [(1, 0.5), (2, 0.6)]
    runs = {run.info.run_name: run for run in store.search_runs([tracker.experiment_id])}
    assert set(runs) == {"sweep", "trial-0000", "trial-0001"}, "one run per trial, none duplicated"
    late = runs["trial-0001"]
    assert late.data.tags[PARENT_TAG] == parent, "the queued run found its parent"
    assert late.data.params["training.lr"] == "0.2"
    assert history(store, late.info.run_id) == [(1, 0.3)]
    assert {runs[name].info.status for name in ("trial-0000", "trial-0001")} == {"FINISHED"}
    assert runs["sweep"].data.tags["note"] == "after the outage"
    assert tracker.report_unlogged() == []


def test_outage_that_outlasts_the_sweep_ends_with_a_warning_listing_each_lost_write(flaky):
    tracker, client, messages, store = flaky
    run = tracker.start_run("sweep/trial-0000", "trial-0000", {}, {})
    tracker.log_metrics(run, {metrics.VAL_ACCURACY: 0.5}, step=1)
    client.down = True
    tracker.log_metrics(run, {metrics.VAL_ACCURACY: 0.7, metrics.TEST_ACCURACY: 0.69}, step=2)
    tracker.finish(run, "FINISHED")

    missing = tracker.report_unlogged()

    assert missing == [
        f"trial-0000 ({run}): metrics val_accuracy, test_accuracy at step 2",
        f"trial-0000 ({run}): tags lepton.status",
        f"trial-0000 ({run}): status FINISHED",
    ]
    warning = messages[messages.index(next(m for m in messages if "could not be logged" in m)):]
    assert warning[0].startswith("lepton-ray: warning: 3 write(s) could not be logged to MLflow at sqlite:///")
    assert warning[1:] == [f"  {line}" for line in missing]
    assert history(store, run) == [(1, 0.5)] and store.get_run(run).info.status == "RUNNING"
    # The sweep's callback and its driver both report at the end: each lost write is listed once.
    warned = len(messages)
    assert tracker.report_unlogged() == missing
    assert len(messages) == warned


def test_a_write_mlflow_refuses_is_listed_and_does_not_block_the_queue(flaky):
    tracker, client, messages, store = flaky
    run = tracker.start_run("sweep/trial-0000", "trial-0000", {}, {})
    client.down = True
    tracker.set_tags("no-such-run", {"x": "1"})  # refused for good once replayed
    tracker.log_metrics(run, {metrics.VAL_ACCURACY: 0.5}, step=1)
    client.down = False

    assert tracker.flush()

    assert history(store, run) == [(1, 0.5)]
    assert len(tracker.writes.lost) == 1 and tracker.writes.lost[0].startswith("no-such-run: tags x (")
    assert any("MLflow refused a write, not retried" in line for line in messages)


def test_a_write_that_keeps_failing_while_the_server_is_healthy_is_given_up_after_three_tries(flaky):
    tracker, client, messages, store = flaky
    run = tracker.start_run("sweep/trial-0000", "trial-0000", {}, {})
    client.fails = lambda name, args: name == "set_terminated"
    tracker.finish(run, "FINISHED")
    assert [item.what for item in tracker.writes.queue] == ["status FINISHED"]

    for _ in range(3):
        tracker.flush()

    assert tracker.writes.queue == []
    assert tracker.writes.lost == [f"trial-0000 ({run}): status FINISHED (injected: connection refused)"]
    assert store.get_run(run).data.tags[STATUS_TAG] == "finished", "the write before it landed"


def test_transient_and_permanent_errors_are_told_apart():
    assert write_queue.is_transient(ConnectionError("refused"))
    assert write_queue.is_transient(MlflowException("API request failed"))  # INTERNAL_ERROR: what MLflow raises on a dead server
    assert write_queue.is_transient(MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE))
    assert not write_queue.is_transient(MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE))
    assert not write_queue.is_transient(MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not write_queue.is_transient(FileNotFoundError("student.pt"))
    assert not write_queue.is_transient(ValueError("no"))


def test_a_database_store_that_went_away_keeps_writes_queued_until_it_takes_connections_again():
    """MLflow's SQLAlchemy store raises TEMPORARILY_UNAVAILABLE when its database is gone; the replay then waits
    on a real connection to the database (a closed port here), not on an HTTP /health a database has not got."""
    port = free_port()
    queue = write_queue.WriteQueue(f"postgresql://lepton:secret@127.0.0.1:{port}/mlflow", retries=0, cooldown_s=0.0, warn=lambda line: None)
    calls: list[str] = []

    def database_gone(run_id: str) -> None:
        calls.append(run_id)
        raise MlflowException("connection refused", error_code=TEMPORARILY_UNAVAILABLE)

    queue.write("run-1", "metrics", database_gone)
    for _ in range(5):
        assert not queue.flush()

    assert calls == ["run-1"], "no replay while the database takes no connection"
    assert [item.what for item in queue.queue] == ["metrics"] and queue.lost == [], "queued, never given up while it is down"
    assert "Connection refused" in write_queue.health_problem(queue.uri)


# ---- a real mlflow server stopped and restarted under the Tune callback --------------------------

def fake_trial(trial_id: str, number: int, **result: float) -> SimpleNamespace:
    """What `MlflowTrialLogger` reads from a Tune trial."""
    return SimpleNamespace(trial_id=trial_id, config={NUMBER_KEY: number, "distillation.alpha": 0.5}, last_result=dict(result),
                           error_file=None, get_error=lambda: None)


@pytest.mark.mlflow_server
def test_server_stopped_mid_sweep_loses_nothing_and_the_callback_never_raises(tmp_path, monkeypatch, capsys):
    from lepton_ray.sweep.callbacks import MlflowTrialLogger

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the Tracker's own retries are under test
    store = tmp_path / "server"
    store.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    servers = [start_server(port, store)]
    try:
        tracker = Tracker(uri, "outage", retries=1, backoff_s=0.05, cooldown_s=0.0)
        wf = load_workflow(QUICKSTART)
        parent = tracker.start_run("sweep:outage", "sweep", wf.to_dict(), {"lepton.kind": "sweep"})
        logger = MlflowTrialLogger(tracker, parent, "sweep:outage", {"dataset": "digits"})
        first = fake_trial("t0", 0)
        logger.on_trial_start(0, [], first)
        logger.on_trial_result(0, [], first, {metrics.EPOCH: 1, metrics.VAL_ACCURACY: 0.5})

        stop_server(servers[0])
        started = time.monotonic()
        logger.on_trial_result(0, [], first, {metrics.EPOCH: 2, metrics.VAL_ACCURACY: 0.6})
        second = fake_trial("t1", 1)
        logger.on_trial_start(0, [], second)
        logger.on_trial_result(0, [], second, {metrics.EPOCH: 1, metrics.VAL_ACCURACY: 0.4})
        outage_s = time.monotonic() - started
        assert [item.what for item in tracker.writes.queue] == ["metrics epoch, val_accuracy at step 2", "start run (params, tags)", "metrics epoch, val_accuracy at step 1"]
        assert "unreachable" in capsys.readouterr().err

        servers.append(start_server(port, store))
        logger.on_trial_result(0, [], first, {metrics.EPOCH: 3, metrics.VAL_ACCURACY: 0.7})
        for trial in (first, second):
            trial.last_result = {metrics.BEST_VAL_ACCURACY: 0.91, metrics.TEST_ACCURACY: 0.9}
            logger.on_trial_complete(0, [], trial)
        logger.on_experiment_end([])
        print(f"callbacks during the outage took {outage_s:.2f}s")
    finally:
        for server in servers:
            stop_server(server)

    err = capsys.readouterr().err
    assert "answers again; logged 3 queued write(s)" in err
    assert "could not be logged" not in err
    assert outage_s < 5
    with sqlite3.connect(store / "mlflow.db") as db:  # the server's own store, read without MLflow
        runs = dict(db.execute("SELECT name, run_uuid FROM runs").fetchall())
        curves = {name: db.execute("SELECT step, value FROM metrics WHERE run_uuid = ? AND key = ? ORDER BY step", (run_id, metrics.VAL_ACCURACY)).fetchall()
                  for name, run_id in runs.items()}
        statuses = dict(db.execute("SELECT name, status FROM runs").fetchall())
        parents = dict(db.execute("SELECT r.name, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid WHERE t.key = ?", (PARENT_TAG,)).fetchall())
        status_tags = dict(db.execute("SELECT r.name, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid WHERE t.key = ?", (STATUS_TAG,)).fetchall())
    assert sorted(runs) == ["sweep", "trial-0000", "trial-0001"]
    assert curves["trial-0000"] == [(1, 0.5), (2, 0.6), (3, 0.7)], "logged before, during and after the outage"
    assert curves["trial-0001"] == [(1, 0.4)]
    assert parents == {"trial-0000": runs["sweep"], "trial-0001": runs["sweep"]}
    assert statuses["trial-0000"] == statuses["trial-0001"] == "FINISHED"
    assert status_tags == {"trial-0000": "finished", "trial-0001": "finished"}
