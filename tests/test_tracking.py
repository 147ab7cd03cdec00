"""The MLflow tracker's local layout: artifacts of a SQLite store live next to its database."""

from __future__ import annotations


from lepton_ray.tracking.tracker import Tracker
from lepton_ray.tracking.uris import tracking_uri


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


def test_a_resume_closes_the_runs_of_trials_the_study_finished_before_the_driver_was_killed(tmp_path):
    """Tune tells the searcher before the callbacks: a kill in between leaves a COMPLETE trial's run RUNNING.
    (tests/test_resume.py hits this window only by chance; here each study state is set up on purpose.)"""
    import torch

    from lepton_ray import metrics
    from lepton_ray.trial.sessions import CHECKPOINT_PATH_KEY
    from lepton_ray.tracking.tracker import PARENT_TAG
    from lepton_ray.trial.files import STUDENT_FILE
    from lepton_ray.sweep.callbacks import close_runs_of_finished_trials

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "resume")
    parent = tracker.start_run("sweep", "sweep", {}, {})
    runs = {n: tracker.start_run(f"sweep/trial-{n}", f"trial-{n}", {}, {"optuna_trial": str(n)}, parent_run_id=parent) for n in range(4)}
    tracker.log_metrics(runs[0], {metrics.VAL_ACCURACY: 0.9}, step=3)
    student_dir = tmp_path / "trial-0000" / "checkpoint_1"
    student_dir.mkdir(parents=True)
    torch.save({"metrics": {}}, student_dir / STUDENT_FILE)
    completed = {metrics.BEST_VAL_ACCURACY: 0.96, metrics.TEST_ACCURACY: 0.95, metrics.SIZE_BYTES: 1234.0, metrics.VAL_ACCURACY: 0.5, CHECKPOINT_PATH_KEY: str(student_dir)}

    closed = close_runs_of_finished_trials(
        tracker, parent, {0: "COMPLETE", 1: "PRUNED", 2: "FAIL"}, lambda n: completed if n == 0 else None,
    )

    assert closed == [0, 1, 2]
    got = {n: tracker.client.get_run(run_id) for n, run_id in runs.items()}
    assert [got[n].info.status for n in range(4)] == ["FINISHED", "KILLED", "FAILED", "RUNNING"], "trial 3 is still to run: left for the resume"
    assert got[0].data.metrics[metrics.TEST_ACCURACY] == 0.95 and got[0].data.metrics[metrics.SIZE_BYTES] == 1234.0
    assert [m.value for m in tracker.client.get_metric_history(runs[0], metrics.VAL_ACCURACY)] == [0.9], "metrics already logged are not logged twice"
    assert [a.path for a in tracker.client.list_artifacts(runs[0], "student")] == [f"student/{STUDENT_FILE}"]
    assert got[0].data.tags[PARENT_TAG] == parent
    assert close_runs_of_finished_trials(tracker, parent, {0: "COMPLETE", 1: "PRUNED", 2: "FAIL"}, lambda n: completed) == [], "idempotent"


def test_children_indexed_once_are_reopened_by_key_and_new_keys_get_one_new_run_each(tmp_path):
    """A resumed driver reads its sweep's child runs once, then opens each trial's run without a search per trial."""
    from lepton_ray.tracking.tracker import PARENT_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    before = Tracker(uri, "exp")
    parent = before.start_run("sweep", "sweep", {}, {})
    first = before.start_run("sweep/trial-0000", "trial-0000", {}, {}, parent_run_id=parent)
    before.start_run("other/trial-0000", "trial-0000", {}, {})  # same trial name, another sweep: not a child

    after = Tracker(uri, "exp")
    after.index_children(parent)
    assert after.child_runs[parent] == {"sweep/trial-0000": first}
    assert after.start_run("sweep/trial-0000", "trial-0000", {}, {}, parent_run_id=parent) == first
    second = after.start_run("sweep/trial-0001", "trial-0001", {}, {}, parent_run_id=parent)
    assert after.start_run("sweep/trial-0001", "trial-0001", {}, {}, parent_run_id=parent) == second != first
    children = after.client.search_runs([after.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")
    assert sorted(run.info.run_id for run in children) == sorted([first, second])
