"""What a reviewer sees of the pick in the MLflow UI: the champion marked on its own trial run (tag and
description), the registered version and that run linked both ways, the sweep run's description and headline
figures, and the experiment's description. MLflow shows a run's or experiment's description from its
`mlflow.note.content` tag."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lepton_ray import metrics

if TYPE_CHECKING:
    from lepton_ray.deploy.pareto import Selection
    from lepton_ray.deploy.published import Published
    from lepton_ray.tracking.tracker import Tracker

DESCRIPTION_TAG = "mlflow.note.content"
CHAMPION_TAG = "lepton.champion"
"""On the picked trial's run: "true"."""
REGISTERED_TAG = "lepton.registered_version"
"""On the picked trial's run: the `models:/NAME/VERSION` URI of what was registered from it."""


def trial_run_id(selection: "Selection") -> str | None:
    """The picked trial's own MLflow run (the trials table carries it when read from MLflow)."""
    run_id = selection.row.get("run_id")
    return str(run_id) if isinstance(run_id, str) and run_id else None


def knobs(selection: "Selection") -> dict[str, Any]:
    """The values the picked trial trained with for each searched knob: the trials table's columns named by a dotted
    workflow path (`distillation.alpha`); figures have plain names."""
    return {name: value for name, value in selection.row.items() if "." in name and value is not None and value == value}


def mark_champion(
    tracker: "Tracker", parent_run_id: str, selection: "Selection", published: "Published", notes: tuple[str, ...], cost_column: str,
) -> None:
    """Tags and descriptions on the trial run, the sweep run and the experiment (see the module docstring)."""
    trial_run = trial_run_id(selection)
    summary = "\n\n".join([f"**Champion**: trial {selection.trial}, registered as `{published.model_uri}` (alias `champion`).", *notes])
    if trial_run is not None:
        tracker.set_tags(trial_run, {CHAMPION_TAG: "true", REGISTERED_TAG: published.model_uri, DESCRIPTION_TAG: summary})
    tracker.set_tags(parent_run_id, {DESCRIPTION_TAG: summary, REGISTERED_TAG: published.model_uri})
    headline = {name: float(selection.row[name]) for name in (metrics.SELECTION_ACCURACY, cost_column) if name in selection.row}
    tracker.log_metrics(parent_run_id, headline)
    tracker.client.set_experiment_tag(tracker.experiment_id, DESCRIPTION_TAG, (
        "lepton-ray sweeps: one parent run per sweep, one child run per trial. The champion's trial run carries "
        f"`{CHAMPION_TAG}=true` and a description; runs on the accuracy/cost front carry `lepton.pareto_front=true`. "
        "Decisions rank by `int8_val_accuracy` (validation); `test_accuracy` is reported only."
    ))
