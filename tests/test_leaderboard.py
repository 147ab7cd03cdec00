"""`lepton-ray leaderboard`: read by the workflow's tracking settings, sorted by any column or alias, key columns
by default. The sweeps are written straight into a SQLite MLflow store, as the sweep's callbacks log them."""

from __future__ import annotations

import pytest
import yaml

from lepton_ray import metrics
from lepton_ray.cli import main
from lepton_ray.config import apply_overrides, load_workflow
from lepton_ray.tracking.tracker import Tracker

from conftest import QUICKSTART

KNOB = "compression.pruning.sparsity"
TRIALS = [  # (int8 val accuracy, test accuracy, int8 gzip bytes, sparsity knob, status): validation and test rank them apart
    (0.90, 0.97, 3000.0, "0.5", "FINISHED"),
    (0.95, 0.91, 5000.0, "0.1", "FINISHED"),
    (None, None, None, "0.3", "FAILED"),
    (0.93, 0.99, 6000.0, "0.2", "FINISHED"),  # dominated on validation by trial 1; the best on test
]


def log_sweep(uri: str, experiment: str, trials: list[tuple], key: str = "sweep-key", workflow: str = "digits_quickstart") -> str:
    """A parent sweep run and one child run per trial, with the tags and metrics `MlflowTrialLogger` writes."""
    tracker = Tracker(uri, experiment)
    parent = tracker.start_run(key, "sweep", {}, {"lepton.kind": "sweep", "workflow": workflow})
    tracker.log_metrics(parent, {metrics.VAL_SAMPLES: 270})
    for number, (accuracy, test_accuracy, gzip_bytes, sparsity, status, *trained) in enumerate(trials):  # trained: the trial's own val accuracy
        run_id = tracker.start_run(f"{key}/trial-{number:04d}", f"trial-{number:04d}", {}, {"optuna_trial": str(number), f"knob.{KNOB}": sparsity}, parent_run_id=parent)
        if accuracy is not None:
            tracker.log_metrics(run_id, {metrics.INT8_VAL_ACCURACY: accuracy, metrics.BEST_VAL_ACCURACY: (trained or [accuracy])[0], metrics.TEST_ACCURACY: test_accuracy, metrics.INT8_GZIP_BYTES: gzip_bytes, metrics.LATENCY_MS: 0.1, metrics.SIZE_BYTES: gzip_bytes / 2})
        tracker.finish(run_id, status, error="ValueError: boom" if status == "FAILED" else None)
    tracker.finish(parent)
    return parent


@pytest.fixture(scope="module")
def logged_workflow(tmp_path_factory):
    """The quickstart workflow pointed at one store holding its sweep (one store per module: creating one takes seconds)."""
    folder = tmp_path_factory.mktemp("leaderboard")
    path = folder / "workflow.yaml"
    path.write_text(yaml.safe_dump(apply_overrides(yaml.safe_load(QUICKSTART.read_text()), {"tracking.uri": f"sqlite:///{folder / 'mlflow.db'}"})))
    wf = load_workflow(path)
    log_sweep(wf.tracking.uri, wf.tracking.experiment, TRIALS)
    return path, wf


def table_rows(out: str) -> list[list[str]]:
    """The printed table's rows (header first), without the notes under it."""
    return [line.split() for line in out.splitlines() if line.strip() and not line.startswith("(")]


def test_leaderboard_of_a_workflow_reads_its_tracking_store_and_shows_the_key_columns(logged_workflow, capsys):
    path, wf = logged_workflow
    assert main(["leaderboard", str(path)]) == 0
    out = capsys.readouterr().out
    header, *rows = table_rows(out)
    assert header == ["trial", "status", metrics.SELECTION_ACCURACY, metrics.TEST_ACCURACY, wf.sweep.cost_metric, KNOB, "on_front", "off_front"]
    assert [row[:2] for row in rows] == [["0", "finished"], ["1", "finished"], ["2", "failed"], ["3", "finished"]]
    assert [row[6:] for row in rows] == [["True"], ["True"], ["False"], ["False", "dominated"]], "the front is drawn on validation: trial 3 leads on test only"
    assert "(int8_val_accuracy 0.9500 is +- 1.33 pt SE, 270 validation samples: closer trials cannot be told apart)" in out

    assert main(["leaderboard", str(path), "--all-columns"]) == 0
    out = capsys.readouterr().out
    assert metrics.LATENCY_MS in out and "~" + metrics.SIZE_BYTES in out and "ValueError: boom" in out


@pytest.mark.parametrize("sort,order", [
    ("accuracy", ["1", "3", "0", "2"]), (metrics.TEST_ACCURACY, ["3", "0", "1", "2"]), ("cost", ["0", "1", "3", "2"]),
    ("~" + metrics.SIZE_BYTES, ["0", "1", "3", "2"]), (KNOB, ["1", "3", "2", "0"]),
])
def test_leaderboard_sorts_by_any_column_or_alias_accuracy_first_and_the_rest_cheapest_first(logged_workflow, capsys, sort, order):
    path, _ = logged_workflow
    assert main(["leaderboard", str(path), "--sort", sort]) == 0
    assert [row[0] for row in table_rows(capsys.readouterr().out)[1:]] == order


def test_leaderboard_refuses_an_unknown_sort_column_in_one_line_listing_the_columns(logged_workflow, capsys):
    path, _ = logged_workflow
    assert main(["leaderboard", str(path), "--sort", "acc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("lepton-ray: error: --sort: unknown column 'acc'; sort by accuracy, cost or one of: trial, "), err
    assert metrics.INT8_GZIP_BYTES in err and KNOB in err


def test_leaderboard_flags_override_the_workflows_experiment_and_cost(logged_workflow, capsys):
    path, wf = logged_workflow
    log_sweep(wf.tracking.uri, "other", [(0.5, 0.6, 100.0, "0.9", "FINISHED")])
    assert main(["leaderboard", str(path), "--experiment", "other", "--cost", metrics.LATENCY_MS]) == 0
    header, *rows = table_rows(capsys.readouterr().out)
    assert metrics.LATENCY_MS in header and metrics.INT8_GZIP_BYTES not in header
    assert rows == [["0", "finished", "0.5", "0.6", "0.1", "0.9", "True"]]

    log_sweep(wf.tracking.uri, "tolerance", [(0.96, 0.95, 15_354.0, "0.4", "FINISHED", 0.99), (0.90, 0.90, 9_000.0, "0.8", "FINISHED")])
    assert main(["leaderboard", str(path), "--experiment", "tolerance"]) == 0
    header, *rows = table_rows(capsys.readouterr().out)
    assert rows[0][4] == "15,354", "byte counts as integers with thousands separators"
    assert " ".join(rows[0][6:]) == "False int8 file -3.00 pt > export.tolerance 1", "why the more accurate trial is not on the front"
    assert main(["leaderboard", str(path), "--experiment", "missing"]) == 2
    assert "--experiment: no MLflow experiment 'missing'" in capsys.readouterr().err


def test_leaderboard_on_a_missing_sqlite_file_says_so_and_creates_nothing(tmp_path, capsys):
    """MLflow creates an empty database at any SQLite path it is given; a read must not leave one behind."""
    missing = tmp_path / "typo.db"
    assert main(["leaderboard", "--tracking-uri", f"sqlite:///{missing}", "--experiment", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("lepton-ray: error: --tracking-uri: no MLflow database at ") and "typo.db" in err, err
    assert not missing.exists() and list(tmp_path.iterdir()) == []


def test_two_workflows_sharing_an_experiment_each_show_and_select_their_own_sweep(tmp_path, capsys):
    """`leaderboard WORKFLOW` and `select WORKFLOW` read the sweep the workflow's output folder holds, not the
    experiment's newest (here the other workflow's, logged after it)."""
    from lepton_ray.sweep.paths import sweep_paths
    from lepton_ray.sweep.study import open_study, sweep_id

    own_trials = {"alpha": TRIALS, "beta": [(0.80, 0.80, 900.0, "0.7", "FINISHED")]}
    paths = {}
    for name, trials in own_trials.items():
        paths[name] = tmp_path / f"{name}.yaml"
        overrides = {"name": name, "output_dir": str(tmp_path / name), "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "tracking.experiment": "shared"}
        paths[name].write_text(yaml.safe_dump(apply_overrides(yaml.safe_load(QUICKSTART.read_text()), overrides)))
        wf = load_workflow(paths[name])
        folder = sweep_paths(wf, single=False)
        log_sweep(wf.tracking.uri, "shared", trials, key=folder.key(sweep_id(open_study(folder.root, wf.sweep))), workflow=name)

    for name, trials in own_trials.items():
        capsys.readouterr()
        assert main(["leaderboard", str(paths[name])]) == 0
        assert len(table_rows(capsys.readouterr().out)) - 1 == len(trials), name
        assert main(["select", str(paths[name])]) == 0
        picked = capsys.readouterr().out.strip().splitlines()[-1]
        assert picked.startswith("picked trial ") and (name == "alpha") == (" 900" not in picked), picked

    (tmp_path / "beta").rename(tmp_path / "beta-moved")  # a reviewer without the sweep folder: the workflow's newest sweep by its tag
    assert main(["leaderboard", str(paths["beta"])]) == 0
    assert len(table_rows(capsys.readouterr().out)) == 2
