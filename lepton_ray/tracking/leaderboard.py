"""The leaderboard: a sweep's trials read back from MLflow as one pandas table.

Measured figures (on each trial's int8 file) come first; estimates from the torch student
(`metrics.ESTIMATES`) are printed with an "~" in front of their name.
"""

from __future__ import annotations

import pandas as pd

from lepton_ray import metrics
from lepton_ray.config import SweepConfig
from lepton_ray.deploy.pareto import artifact_holds, pareto_front
from lepton_ray.tracking.tracker import ERROR_TAG, PARENT_TAG, STATUS_TAG, Tracker

METRIC_COLUMNS = [
    metrics.TEST_ACCURACY, metrics.BEST_VAL_ACCURACY, metrics.INT8_VAL_ACCURACY,
    metrics.INT8_GZIP_BYTES, metrics.INT8_FILE_BYTES, metrics.LATENCY_MS, metrics.LATENCY_IQR_MS, metrics.LATENCY_BATCH_MS, metrics.LATENCY_BATCH_IQR_MS,
    metrics.SIZE_BYTES, metrics.MACS, metrics.BOPS, metrics.PARAMS, metrics.SPARSITY, metrics.BITS, metrics.EPOCH,
]
ESTIMATE_MARK = "~"


def latest_sweep_run_id(tracker: Tracker) -> str | None:
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.`lepton.kind` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def trials_frame(
    tracker: Tracker, parent_run_id: str, cost_metric: str = SweepConfig.model_fields["cost_metric"].default, max_int8_drop_points: float | None = None,
) -> pd.DataFrame:
    """One row per trial run of the sweep: trial number, status, knobs, metrics, error, on_front (given
    `max_int8_drop_points`, only trials whose int8 file holds their accuracy can be on it: `pareto.artifact_holds`)."""
    import mlflow

    runs = mlflow.search_runs(experiment_ids=[tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=10_000)
    if runs.empty:
        return pd.DataFrame(columns=["trial", "status", "run_id", *METRIC_COLUMNS, "error", "on_front"])
    table = pd.DataFrame({"trial": runs["tags.optuna_trial"].astype(int), "run_id": runs["run_id"]})
    table["status"] = runs.get(f"tags.{STATUS_TAG}", pd.Series("running", index=runs.index)).fillna("running")
    for column in sorted(c for c in runs.columns if c.startswith("tags.knob.")):
        table[column.removeprefix("tags.knob.")] = runs[column]
    for name in METRIC_COLUMNS:
        table[name] = runs.get(f"metrics.{name}", pd.Series(float("nan"), index=runs.index))
    table["error"] = runs.get(f"tags.{ERROR_TAG}", pd.Series("", index=runs.index)).fillna("")
    finished = table["status"] == "finished"
    if max_int8_drop_points is not None:
        finished &= artifact_holds(table, max_int8_drop_points)
    table["on_front"] = False
    if finished.any():
        table.loc[finished, "on_front"] = pareto_front(table.loc[finished, metrics.TEST_ACCURACY].to_numpy(), table.loc[finished, cost_metric].to_numpy())
    return table.sort_values("trial").reset_index(drop=True)


def format_table(table: pd.DataFrame, cost_metric: str, sort: str | None = None, pareto_only: bool = False) -> str:
    if table.empty:
        return "(no trials)"
    view = table[table["on_front"]] if pareto_only else table
    if sort:
        if sort not in view.columns:
            from lepton_ray.errors import ConfigError

            raise ConfigError(f"--sort: unknown column {sort!r}; choose one of {', '.join(view.columns)}")
        view = view.sort_values(sort, ascending=sort in (cost_metric, *metrics.COST_METRICS))
    columns = [c for c in view.columns if c not in ("run_id",)]
    shown = view[columns].rename(columns={name: ESTIMATE_MARK + name for name in metrics.ESTIMATES})
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}") + f"\n({ESTIMATE_MARK}: estimated from the torch student, not measured on its int8 file)"
