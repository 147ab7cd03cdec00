"""MLflow: where runs go, one run per trial with params, per-epoch curves, costs and lineage.

A single writer (the driver process) logs through `MlflowClient`, so SQLite stays safe with
concurrent trials. Run names are deterministic, so a restarted trial finds its run again.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable

from lepton_ray.errors import TrackingError

PARENT_TAG = "mlflow.parentRunId"
TRIAL_KEY_TAG = "lepton.trial_key"
STATUS_TAG = "lepton.status"
ERROR_TAG = "lepton.error"


def tracking_uri(workflow_uri: str) -> str:
    """`MLFLOW_TRACKING_URI` in the environment wins over the workflow, as MLflow users expect."""
    return os.environ.get("MLFLOW_TRACKING_URI") or workflow_uri


def redact(uri: str) -> str:
    """Hide credentials in URIs before they reach logs or params."""
    return re.sub(r"//[^/@]+@", "//***@", uri)


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail before any trial starts when a tracking server does not answer its health check."""
    if not uri.startswith(("http://", "https://")):
        if uri.startswith("sqlite:///"):
            db_path = Path(uri.removeprefix("sqlite:///"))
            if not db_path.parent.exists() and str(db_path.parent) not in ("", "."):
                raise TrackingError(f"tracking.uri: folder {str(db_path.parent)!r} for the SQLite file does not exist; create it or change the URI")
        return
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(_without_credentials(health), timeout=timeout_s) as response:
            if response.status != 200:
                raise TrackingError(f"tracking.uri: {redact(uri)} answered {response.status} on /health; check the server")
    except (urllib.error.URLError, OSError) as err:
        raise TrackingError(f"tracking.uri: cannot reach MLflow at {redact(uri)} ({getattr(err, 'reason', err)}); start the server or fix the URI") from None


def _without_credentials(url: str) -> urllib.request.Request:
    match = re.match(r"(https?://)([^/@]+)@(.*)", url)
    if not match:
        return urllib.request.Request(url)
    import base64

    request = urllib.request.Request(match.group(1) + match.group(3))
    request.add_header("Authorization", "Basic " + base64.b64encode(match.group(2).encode()).decode())
    return request


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: MLflow params are flat strings."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


class Tracker:
    """Thin wrapper over `MlflowClient` for one experiment."""

    def __init__(self, uri: str, experiment: str, create: bool = True) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = uri
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(tracking_uri=uri)
        existing = self.client.get_experiment_by_name(experiment)
        if existing is None and not create:
            raise TrackingError(f"--experiment: no MLflow experiment {experiment!r} at {redact(uri)}; check the name and tracking URI")
        self.experiment_id = existing.experiment_id if existing else self.client.create_experiment(experiment)
        self.experiment = experiment

    def find_run(self, key: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{TRIAL_KEY_TAG}` = '{key}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def start_run(self, key: str, run_name: str, params: dict[str, Any], tags: dict[str, str], parent_run_id: str | None = None) -> str:
        """Open (or re-open, for the same `key`) a run; params are logged once."""
        from mlflow.entities import Param, RunTag

        run_id = self.find_run(key)
        all_tags = {TRIAL_KEY_TAG: key, **tags, **({PARENT_TAG: parent_run_id} if parent_run_id else {})}
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
            run_id = run.info.run_id
            self.client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in flatten(params).items()])
        else:
            self.client.update_run(run_id, status="RUNNING")
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in all_tags.items()])
        return run_id

    def log_metrics(self, run_id: str, values: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, run_id: str, files: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in files:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def finish(self, run_id: str, status: str = "FINISHED", error: str | None = None) -> None:
        tags = {STATUS_TAG: status.lower()}
        if error:
            tags[ERROR_TAG] = error[:5000]
        self.set_tags(run_id, tags)
        self.client.set_terminated(run_id, status=status)

    def run_url(self, run_id: str) -> str:
        return f"{redact(self.uri)} experiment {self.experiment!r} ({self.experiment_id}) run {run_id}"
