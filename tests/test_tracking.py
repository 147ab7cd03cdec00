"""The MLflow tracker's local layout: artifacts of a SQLite store live next to its database."""

from __future__ import annotations

from pathlib import Path

from lepton_ray.tracking import Tracker, tracking_uri


def test_sqlite_store_keeps_artifacts_next_to_the_database_not_in_the_working_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp one")
    note = tmp_path / "note.txt"
    note.write_text("hello")
    run_id = tracker.start_run("key", "run", {}, {})
    tracker.log_artifacts(run_id, [note], "files")
    stored = list((tmp_path / "mlartifacts").rglob("note.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "hello"
    assert not list(elsewhere.rglob("*")), "nothing written under the working folder"


def test_a_workflow_uri_is_not_overridden_by_the_uri_an_earlier_tracker_put_in_the_environment(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI; a second sweep in the process must still use its own store."""
    first, second = f"sqlite:///{tmp_path / 'first.db'}", f"sqlite:///{tmp_path / 'second.db'}"
    Tracker(tracking_uri(first), "one")
    assert tracking_uri(second) == second
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'users.db'}")
    assert tracking_uri(second) == f"sqlite:///{tmp_path / 'users.db'}", "a URI the user exported still wins"
