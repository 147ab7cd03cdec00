"""Shared fixtures: workflow files written into tmp folders, a local MLflow URI, one Ray session."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from lepton_ray.config import apply_overrides

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "workflows" / "digits_quickstart.yaml"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never inherit a user's tracking server or cluster address."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def teacher_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart teacher trained once per test session (about 15 s)."""
    from lepton_ray.config import load_workflow
    from lepton_ray.data.datasets import build_data
    from lepton_ray.trial.teacher import prepare_teachers

    folder = tmp_path_factory.mktemp("teacher")
    wf = load_workflow(QUICKSTART, {"output_dir": str(folder), "teacher.checkpoint": str(folder / "teacher.pt"), "teacher.train.epochs": 10})
    prepare_teachers(wf, build_data(wf.data), log=lambda _: None)
    return folder / "teacher.pt"


@pytest.fixture
def write_workflow(tmp_path: Path) -> Callable[..., Path]:
    """Write the quickstart workflow with dotted-path overrides into tmp_path; returns its path."""

    def write(overrides: dict[str, Any] | None = None, raw: dict[str, Any] | None = None, name: str = "workflow.yaml") -> Path:
        base = raw if raw is not None else yaml.safe_load(QUICKSTART.read_text())
        defaults = {
            "output_dir": str(tmp_path / "runs"),
            "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "sweep.space": str(REPO / "search_spaces" / "quickstart.yaml"),
            "teacher.checkpoint": str(tmp_path / "teacher.pt"),
            "selection.distillation_control.enabled": False,  # one more trial per export; tests/test_selection.py turns it on
        }
        content = apply_overrides(base, {**(defaults if raw is None else {}), **(overrides or {})})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(content, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster shared by all Ray tests (starting one costs seconds)."""
    import ray

    from lepton_ray.cluster.ray_runtime import init_ray

    init_ray()
    yield ray
    ray.shutdown()


def tiny_training(epochs: int = 2) -> dict[str, Any]:
    """Overrides that make a trial take seconds: few epochs, a small teacher block."""
    return {"training.epochs": epochs, "teacher.train.epochs": 4}


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def pytest_collection_modifyitems(items):
    """Fast pure tests first, Ray and server tests after (the style guide's order)."""
    items.sort(key=lambda item: (item.get_closest_marker("ray") is not None or item.get_closest_marker("mlflow_server") is not None))


os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def study_states(study_db: Path) -> list[str]:
    """Trial states in number order, read through a read-only connection: `optuna.load_study` writes
    (it creates missing tables), which raced the driver still creating its study and made it exit 1."""
    if not study_db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{study_db}?mode=ro", uri=True, timeout=10)) as db:
            return [state for (state,) in db.execute("SELECT state FROM trials ORDER BY number")]
    except sqlite3.OperationalError:  # tables not created yet
        return []


@pytest.fixture(scope="session")
def own_code(tmp_path_factory) -> Path:
    """A user's own model and data modules and a teacher state_dict outside the package (tests/own_code.py)."""
    from own_code import write_user_files

    return write_user_files(tmp_path_factory.mktemp("user"))
