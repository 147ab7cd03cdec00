"""The leaderboard: a sweep's trials read back from MLflow as one pandas table.

Measured figures (on each trial's int8 file) come first; estimates from the torch student
(`metrics.ESTIMATES`) are printed with an "~" in front of their name.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lepton_ray import metrics
from lepton_ray.config import SweepConfig
from lepton_ray.deploy.pareto import artifact_holds, format_cost, noise_note, pareto_front
from lepton_ray.errors import ConfigError
from lepton_ray.tracking.tracker import ERROR_TAG, PARENT_TAG, STATUS_TAG, Tracker

METRIC_COLUMNS = [
    metrics.INT8_VAL_ACCURACY, metrics.BEST_VAL_ACCURACY, metrics.TEST_ACCURACY,
    metrics.INT8_GZIP_BYTES, metrics.INT8_FILE_BYTES, metrics.LATENCY_MS, metrics.LATENCY_IQR_MS, metrics.LATENCY_BATCH_MS, metrics.LATENCY_BATCH_IQR_MS,
    metrics.SIZE_BYTES, metrics.MACS, metrics.BOPS, metrics.PARAMS, metrics.SPARSITY, metrics.BITS, metrics.EPOCH,
    metrics.SETUP_S, metrics.COMPUTE_S, metrics.REESTIMATE_S, metrics.FINISH_S,
]
ESTIMATE_MARK = "~"


def latest_sweep_run_id(tracker: Tracker, workflow: str | None = None) -> str | None:
    """The experiment's newest sweep run; given `workflow`, the newest of that workflow's (its `workflow` tag)."""
    of_workflow = "" if workflow is None else f" and tags.`workflow` = '{workflow}'"
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.`lepton.kind` = 'sweep'{of_workflow}", order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def trials_frame(
    tracker: Tracker, parent_run_id: str, cost_metric: str = SweepConfig.model_fields["cost_metric"].default, max_int8_drop_points: float | None = None,
) -> pd.DataFrame:
    """One row per trial run of the sweep: trial number, status, knobs, metrics, error, on_front (given
    `max_int8_drop_points`, only trials whose int8 file holds their accuracy can be on it: `pareto.artifact_holds`).
    The front is drawn on `metrics.SELECTION_ACCURACY` (validation), as `select` draws it."""
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=10_000)
    if not runs:
        return pd.DataFrame(columns=["trial", "status", "run_id", *METRIC_COLUMNS, *TRAILING_COLUMNS])
    # Built from the run entities, only the columns shown: `mlflow.search_runs` would also turn every
    # run's ~70 params into DataFrame columns (a tenth of the read on a 400-trial sweep).
    knob_tags = sorted({name for run in runs for name in run.data.tags if name.startswith("knob.")})
    table = pd.DataFrame({
        "trial": [int(run.data.tags["optuna_trial"]) for run in runs],
        "run_id": [run.info.run_id for run in runs],
        "status": [run.data.tags.get(STATUS_TAG, "running") for run in runs],
        **{name.removeprefix("knob."): [run.data.tags.get(name) for run in runs] for name in knob_tags},
        **{name: [run.data.metrics.get(name, float("nan")) for run in runs] for name in METRIC_COLUMNS},
        "error": [run.data.tags.get(ERROR_TAG, "") for run in runs],
    })
    finished = table["status"] == "finished"
    holds = artifact_holds(table, max_int8_drop_points) if max_int8_drop_points is not None else np.ones(len(table), dtype=bool)
    table["on_front"] = False
    if (finished & holds).any():
        table.loc[finished & holds, "on_front"] = pareto_front(
            table.loc[finished & holds, metrics.SELECTION_ACCURACY].to_numpy(), table.loc[finished & holds, cost_metric].to_numpy())
    table[OFF_FRONT_COLUMN] = ""
    table.loc[finished & holds & ~table["on_front"], OFF_FRONT_COLUMN] = "dominated"
    if max_int8_drop_points is not None:
        drops = (table[metrics.BEST_VAL_ACCURACY] - table[metrics.SELECTION_ACCURACY]) * 100
        for index in table.index[finished & ~holds]:
            table.loc[index, OFF_FRONT_COLUMN] = f"int8 file -{drops[index]:.2f} pt > export.tolerance {max_int8_drop_points:g}"
    return table.sort_values("trial").reset_index(drop=True)


TRIAL_COLUMNS = ("trial", "status", "run_id")
OFF_FRONT_COLUMN = "off_front"
"""Why a finished trial is not on the front: dominated, or its int8 file fell outside export.tolerance (never picked)."""
TRAILING_COLUMNS = ("error", "on_front", OFF_FRONT_COLUMN)


def knob_columns(table: pd.DataFrame) -> list[str]:
    """The searched parameters: every column `trials_frame` made from a trial's `knob.*` tags."""
    known = {*TRIAL_COLUMNS, *METRIC_COLUMNS, *TRAILING_COLUMNS}
    return [column for column in table.columns if column not in known]


def sort_column(name: str, table: pd.DataFrame, cost_metric: str) -> str:
    """A `--sort` value as a column of `table`: a column name (with or without its "~"), `accuracy` or `cost`."""
    column = {"accuracy": metrics.SELECTION_ACCURACY, "cost": cost_metric}.get(name, name.removeprefix(ESTIMATE_MARK))
    if column not in table.columns or column == "run_id":
        sortable = [c for c in table.columns if c != "run_id"]
        raise ConfigError(f"--sort: unknown column {name!r}; sort by accuracy, cost or one of: {', '.join(sortable)}")
    return column


def format_table(
    table: pd.DataFrame, cost_metric: str, sort: str | None = None, pareto_only: bool = False, all_columns: bool = False, val_samples: int | None = None,
) -> str:
    """The trials as text. By default the key columns: trial, status, the accuracy decisions rank by (validation) and
    the test accuracy (reported, never ranked by), the cost, the searched knobs, whether on the front; `all_columns`
    adds every figure and the error. Accuracies sort descending, the rest ascending. `val_samples` (the validation
    split's size) adds the standard error of the best validation figure."""
    if table.empty:
        return "(no trials)"
    view = table[table["on_front"]] if pareto_only else table
    if sort:
        column = sort_column(sort, view, cost_metric)
        view = view.sort_values(column, ascending=not (column.endswith("accuracy") or column == "on_front"), kind="stable")
    key = ["trial", "status", metrics.SELECTION_ACCURACY, metrics.TEST_ACCURACY, cost_metric, *knob_columns(view), "on_front", OFF_FRONT_COLUMN]
    columns = [c for c in view.columns if c != "run_id"] if all_columns else list(dict.fromkeys(key))
    shown = view[columns].rename(columns={name: ESTIMATE_MARK + name for name in metrics.ESTIMATES})
    notes = [f"{ESTIMATE_MARK}: estimated from the torch student, not measured on its int8 file"] if set(columns) & set(metrics.ESTIMATES) else []
    if metrics.TEST_ACCURACY in columns:
        notes.append(f"on_front ranks by {metrics.SELECTION_ACCURACY} (validation); {metrics.TEST_ACCURACY} is reported, never ranked by")
    best = view[metrics.SELECTION_ACCURACY].max() if metrics.SELECTION_ACCURACY in view.columns else float("nan")
    if val_samples and pd.notna(best):
        notes.append(f"{metrics.SELECTION_ACCURACY} {best:.4f} is {noise_note(best, val_samples)}: closer trials cannot be told apart")
    if not all_columns:
        notes.append(f"{len(view.columns) - 1 - len(columns)} more columns: lepton-ray leaderboard WORKFLOW --all-columns")
    text = shown.to_string(index=False, float_format=format_cost)  # byte counts as 15,354, not 1.535e+04
    return text + "".join(f"\n({note})" for note in notes)
