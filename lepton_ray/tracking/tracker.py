"""MLflow: one run per trial with params, per-epoch curves, costs and lineage, under one sweep run.

A single writer (the driver process) logs through `MlflowClient`, so SQLite stays safe with
concurrent trials. Run names are deterministic, so a restarted trial finds its run again.
Writes go through a `WriteQueue`, so they survive a tracking outage; reads are not queued.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from lepton_ray.errors import TrackingError
from lepton_ray.tracking.uris import use_for_mlflow_fluent_api, artifact_root, redact
from lepton_ray.console import quiet_info_logs
from lepton_ray.tracking.write_queue import PENDING_PREFIX, WriteQueue, warn_on_stderr

PARENT_TAG = "mlflow.parentRunId"
TRIAL_KEY_TAG = "lepton.trial_key"
STATUS_TAG = "lepton.status"
ERROR_TAG = "lepton.error"
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
"""MLflow's own per-request retries (default: about 4 minutes) shortened, so an outage stalls the sweep
driver for seconds; the write queue does the long wait instead. Values already in the environment win."""


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
    """Thin wrapper over `MlflowClient` for one experiment: run lifecycle (start, log, finish) and reads.

    `retries`, `backoff_s`, `cooldown_s`, `max_failures_while_up` and `warn` configure the outage
    handling of its `WriteQueue` (`self.writes`).
    """

    def __init__(
        self, uri: str, experiment: str, create: bool = True, retries: int = 1, backoff_s: float = 1.0,
        cooldown_s: float = 5.0, max_failures_while_up: int = 3, warn: Callable[[str], None] = warn_on_stderr,
    ) -> None:
        from mlflow.tracking import MlflowClient

        if uri.startswith(("http://", "https://")):
            for name, value in HTTP_RETRY_DEFAULTS.items():
                os.environ.setdefault(name, value)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a tqdm bar per artifact read, between lepton-ray's lines
        quiet_info_logs("mlflow")  # "Creating initial MLflow database tables..." and the like; warnings stay
        if redact(uri) != uri:  # MLflow prints "View run at <uri with credentials>" on every finished run
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        if not create and uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            # MLflow would create an empty database there: a mistyped path must not leave a file behind.
            raise TrackingError(f"--tracking-uri: no MLflow database at {redact(uri)}; point it (or the workflow's tracking.uri) at the sweep's database, or run `lepton-ray sweep` first")
        self.uri = uri
        use_for_mlflow_fluent_api(uri)
        self.client = MlflowClient(tracking_uri=uri)
        existing = self.client.get_experiment_by_name(experiment)
        if existing is None and not create:
            raise TrackingError(f"--experiment: no MLflow experiment {experiment!r} at {redact(uri)}; check the name and tracking URI")
        self.experiment_id = existing.experiment_id if existing else self.client.create_experiment(experiment, artifact_location=artifact_root(uri, experiment))
        self.experiment = experiment
        self.writes = WriteQueue(uri, retries, backoff_s, cooldown_s, max_failures_while_up, warn)
        self.child_runs: dict[str, dict[str, str]] = {}
        """Parent run id -> {key: run id} of its child runs, read once by `index_children`."""

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks (and so this tracker) into `tuner.pkl`: keep credentials out of it.
        An unpickled tracker cannot write; lepton-ray never restores Tune's state (the study is the truth)."""
        return {**self.__dict__, "uri": redact(self.uri), "client": None}

    # ---- run lifecycle (every write goes through the queue) -----------------------------------

    def start_run(self, key: str, run_name: str, params: dict[str, Any], tags: dict[str, str], parent_run_id: str | None = None) -> str:
        """Open (or re-open, for the same `key`) a run; params are logged once. Credentials in values are redacted.

        While MLflow is unreachable this returns a `pending:` id that every other method accepts.
        """
        from mlflow.entities import Param, RunTag

        flat_params = {name: redact(value)[:6000] for name, value in flatten(params).items()}
        clean_tags = {name: redact(str(value)) for name, value in {TRIAL_KEY_TAG: key, **tags}.items()}

        def open_run(_: str) -> str:
            parent = self.writes.resolve(parent_run_id) if parent_run_id else None
            all_tags = {**clean_tags, **({PARENT_TAG: parent} if parent else {})}
            indexed = self.child_runs.get(parent or "")
            run_id = indexed.get(key) if indexed is not None else self.find_run(key)
            if run_id is None:
                run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags).info.run_id
                self.client.log_batch(run_id, params=[Param(k, v) for k, v in flat_params.items()])
                if indexed is not None:
                    indexed[key] = run_id
            else:
                self.client.update_run(run_id, status="RUNNING")
                self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in all_tags.items()])
            return run_id

        pending_id = PENDING_PREFIX + key
        self.writes.run_names[pending_id] = run_name
        run_id = self.writes.write(pending_id, "start run (params, tags)", open_run, opens_run=True)
        if run_id is None:
            return pending_id
        self.writes.run_names[run_id] = run_name
        return run_id

    def log_metrics(self, run_id: str, values: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)  # taken now, so a replayed metric keeps the time it was measured
        batch = [Metric(k, float(v), now, step or 0) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if batch:
            what = f"metrics {', '.join(m.key for m in batch)}" + (f" at step {step}" if step else "")
            self.writes.write(run_id, what, lambda real_id: self.client.log_batch(real_id, metrics=batch))

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, redact(str(v))) for k, v in tags.items()]
        self.writes.write(run_id, f"tags {', '.join(tags)}", lambda real_id: self.client.log_batch(real_id, tags=batch))

    def log_artifacts(self, run_id: str, files: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in files:
            self.writes.write(run_id, f"artifact {Path(path).name}", lambda real_id, path=path: self.client.log_artifact(real_id, str(path), artifact_path))

    def finish(self, run_id: str, status: str = "FINISHED", error: str | None = None) -> None:
        tags = {STATUS_TAG: status.lower()}
        if error:
            tags[ERROR_TAG] = error[:5000]
        self.set_tags(run_id, tags)
        self.writes.write(run_id, f"status {status}", lambda real_id: self.client.set_terminated(real_id, status=status))

    def flush(self) -> bool:
        return self.writes.flush()

    def unlogged(self) -> list[str]:
        return self.writes.unlogged()

    def report_unlogged(self) -> list[str]:
        return self.writes.report_unlogged()

    # ---- reads (never queued) -------------------------------------------------------------------

    def index_children(self, parent_run_id: str) -> None:
        """Read a parent's child runs once, so `start_run` opens each child without searching the experiment
        (a search per trial whose cost grew with every run in it: `benchmarks/sweep_scale.py`). Skipped while
        MLflow is unreachable: `start_run` then searches per key."""
        if parent_run_id.startswith(PENDING_PREFIX):
            return
        children: dict[str, str] = {}
        page_token = None
        try:
            while True:
                page = self.client.search_runs(
                    [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=1000, page_token=page_token,
                )
                children.update({run.data.tags[TRIAL_KEY_TAG]: run.info.run_id for run in page if TRIAL_KEY_TAG in run.data.tags})
                page_token = page.token
                if not page_token:
                    break
        except Exception:  # MLflow went away just now: best effort, like every read here
            return
        self.child_runs[parent_run_id] = children

    def find_run(self, key: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{TRIAL_KEY_TAG}` = '{key}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def running_child_runs(self, parent_run_id: str, by_tag: str) -> dict[str, Any]:
        """A parent's child runs still RUNNING, keyed by the value of their tag `by_tag`."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and attributes.status = 'RUNNING'", max_results=10_000,
        )
        return {run.data.tags[by_tag]: run for run in runs if by_tag in run.data.tags}

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        """Steps at which `key` was already logged on a run (empty for a new, pending or unreadable run)."""
        if run_id.startswith(PENDING_PREFIX):
            return set()
        try:
            return {int(metric.step) for metric in self.client.get_metric_history(run_id, key)}
        except Exception:  # best effort: only used to report wasted work
            return set()

    def run_url(self, run_id: str) -> str:
        return f"{redact(self.uri)} experiment {self.experiment!r} ({self.experiment_id}) run {run_id}"

    def review_link(self) -> str:
        """Where to review the experiment in the MLflow UI: its runs view in the classic (not GenAI) mode, which a fresh
        browser would not open by itself; a local store first needs `mlflow ui` (it serves on 127.0.0.1:5000)."""
        served = self.uri.startswith(("http://", "https://"))
        base = redact(self.uri).rstrip("/") if served else "http://127.0.0.1:5000"
        link = f"{base}/#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
        return link if served else f"{link} (after: mlflow ui --backend-store-uri {redact(self.uri)})"
