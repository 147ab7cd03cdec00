"""The MLflow tracker's local layout: artifacts of a SQLite store live next to its database."""

from __future__ import annotations

from pathlib import Path

from lepton_ray.tracking import Tracker


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
