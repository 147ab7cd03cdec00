"""MLflow: where runs go, one run per trial with params, per-epoch curves, costs and lineage.

A single writer (the driver process) logs through `MlflowClient`, so SQLite stays safe with
concurrent trials. Run names are deterministic, so a restarted trial finds its run again.
Writes survive a tracking outage: each is retried with a short backoff, then queued in order and
replayed when the server answers again; what never made it is listed by `unlogged()`.
"""

from __future__ import annotations

import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from lepton_ray.errors import TrackingError

PARENT_TAG = "mlflow.parentRunId"
TRIAL_KEY_TAG = "lepton.trial_key"
STATUS_TAG = "lepton.status"
ERROR_TAG = "lepton.error"


_URI_SET_BY_TRACKER: str | None = None
"""`mlflow.set_tracking_uri` also writes `MLFLOW_TRACKING_URI`; the value a `Tracker` put there is not the user's."""


def tracking_uri(workflow_uri: str) -> str:
    """`MLFLOW_TRACKING_URI` set by the user wins over the workflow, as MLflow users expect."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    return from_env if from_env and from_env != _URI_SET_BY_TRACKER else workflow_uri


def _use_for_mlflow_fluent_api(uri: str) -> None:
    global _URI_SET_BY_TRACKER
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before != uri:
        _URI_SET_BY_TRACKER = uri


def redact(uri: str) -> str:
    """Hide credentials in URIs before they reach logs or params."""
    return re.sub(r"//[^/@]+@", "//***@", uri)


STORE_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks")
"""URI schemes MLflow has a tracking store for (`postgresql+psycopg2` counts as `postgresql`)."""


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail before any trial starts when the tracking URI is unusable or its server does not answer."""
    from_env = " (set by $MLFLOW_TRACKING_URI, which overrides the workflow)" if os.environ.get("MLFLOW_TRACKING_URI") == uri else ""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else "file"
    if scheme not in STORE_SCHEMES:
        raise TrackingError(f"tracking.uri: {redact(uri)} has no MLflow tracking store for scheme {scheme!r}; use one of {', '.join(STORE_SCHEMES)}{from_env}")
    if uri.startswith("sqlite:///"):
        db_path = Path(uri.removeprefix("sqlite:///"))
        if not db_path.parent.exists() and str(db_path.parent) not in ("", "."):
            raise TrackingError(f"tracking.uri: folder {str(db_path.parent)!r} for the SQLite file does not exist; create it or change the URI{from_env}")
    problem = health_problem(uri, timeout_s)
    if problem:
        raise TrackingError(f"tracking.uri: cannot reach MLflow at {redact(uri)} ({problem}); start the server or fix the URI{from_env}")


def artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store go next to the database file (MLflow's default is ./mlruns under
    whatever folder the process runs in, e.g. a Ray job's temporary working dir); servers decide their own."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = Path(uri.removeprefix("sqlite:///")).resolve()
    return (db_path.parent / "mlartifacts" / re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)).as_uri()


def health_problem(uri: str, timeout_s: float = 1.0) -> str | None:
    """Why an MLflow server does not answer 200 on /health; None when it does (and for local stores)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(_without_credentials(uri.rstrip("/") + "/health"), timeout=timeout_s) as response:
            return None if response.status == 200 else f"answered {response.status} on /health"
    except (urllib.error.URLError, OSError, ValueError) as err:
        return redact(str(getattr(err, "reason", err)))


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


TRANSIENT_MLFLOW_CODES = frozenset({
    "INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "IO_ERROR", "SERVICE_UNDER_MAINTENANCE", "DEADLINE_EXCEEDED",
    "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "COULD_NOT_ACQUIRE_LOCK",
})
"""MLflow error codes worth retrying; any other code (bad value, missing run, no permission) never succeeds on replay."""
PENDING_PREFIX = "pending:"
"""Run ids handed out for runs whose creation is queued; resolved to the real id when it is replayed."""
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
"""MLflow's own per-request retries (default: about 4 minutes) shortened, so an outage stalls the sweep
driver for seconds; the Tracker's queue does the long wait instead. Values already in the environment win."""


def is_transient(err: Exception) -> bool:
    """Connection trouble and server-side failures are retried; errors in what was sent are not."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.error_code in TRANSIENT_MLFLOW_CODES
    return isinstance(err, (ConnectionError, TimeoutError)) or (isinstance(err, OSError) and not isinstance(err, FileNotFoundError))


@dataclass
class QueuedWrite:
    run_id: str
    what: str
    action: Callable[[str], Any]
    """Called with the real run id; a run start returns the id it created or re-opened."""
    opens_run: bool = False
    failures_while_up: int = 0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Tracker:
    """Thin wrapper over `MlflowClient` for one experiment whose writes outlive a tracking outage.

    Each write is tried now, `retries` more times with a doubling backoff from `backoff_s`, then queued.
    While anything is queued, new writes queue behind it (order is kept) and, at most every
    `cooldown_s`, the queue is replayed once the server answers its health check. Reads are not queued.
    """

    def __init__(
        self, uri: str, experiment: str, create: bool = True, retries: int = 1, backoff_s: float = 1.0,
        cooldown_s: float = 5.0, max_failures_while_up: int = 3, warn: Callable[[str], None] = _stderr,
    ) -> None:
        from mlflow.tracking import MlflowClient

        if uri.startswith(("http://", "https://")):
            for name, value in HTTP_RETRY_DEFAULTS.items():
                os.environ.setdefault(name, value)
        if redact(uri) != uri:  # MLflow prints "View run at <uri with credentials>" on every finished run
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri = uri
        _use_for_mlflow_fluent_api(uri)
        self.client = MlflowClient(tracking_uri=uri)
        existing = self.client.get_experiment_by_name(experiment)
        if existing is None and not create:
            raise TrackingError(f"--experiment: no MLflow experiment {experiment!r} at {redact(uri)}; check the name and tracking URI")
        self.experiment_id = existing.experiment_id if existing else self.client.create_experiment(experiment, artifact_location=artifact_root(uri, experiment))
        self.experiment = experiment
        self.retries, self.backoff_s, self.cooldown_s, self.max_failures_while_up = retries, backoff_s, cooldown_s, max_failures_while_up
        self.warn = warn
        self.queue: list[QueuedWrite] = []
        self.lost: list[str] = []
        """'run: what (error)' for writes MLflow refused; they are never retried."""
        self.run_names: dict[str, str] = {}
        self._resolved: dict[str, str] = {}
        self._warned: set[str] = set()
        self._next_try = 0.0

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks (and so this tracker) into `tuner.pkl`: keep credentials out of it.
        An unpickled tracker cannot write; lepton-ray never restores Tune's state (the study is the truth)."""
        state = dict(self.__dict__)
        state.update(uri=redact(self.uri), client=None, warn=_stderr)
        return state

    def find_run(self, key: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{TRIAL_KEY_TAG}` = '{key}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def running_child_runs(self, parent_run_id: str, by_tag: str) -> dict[str, Any]:
        """A parent's child runs still RUNNING, keyed by the value of their tag `by_tag`."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and attributes.status = 'RUNNING'", max_results=10_000,
        )
        return {run.data.tags[by_tag]: run for run in runs if by_tag in run.data.tags}

    def start_run(self, key: str, run_name: str, params: dict[str, Any], tags: dict[str, str], parent_run_id: str | None = None) -> str:
        """Open (or re-open, for the same `key`) a run; params are logged once. Credentials in values are redacted.

        While MLflow is unreachable this returns a `pending:` id that every other method accepts.
        """
        from mlflow.entities import Param, RunTag

        flat_params = {name: redact(value)[:6000] for name, value in flatten(params).items()}
        clean_tags = {name: redact(str(value)) for name, value in {TRIAL_KEY_TAG: key, **tags}.items()}

        def open_run(_: str) -> str:
            all_tags = {**clean_tags, **({PARENT_TAG: self._resolve(parent_run_id)} if parent_run_id else {})}
            run_id = self.find_run(key)
            if run_id is None:
                run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags).info.run_id
                self.client.log_batch(run_id, params=[Param(k, v) for k, v in flat_params.items()])
            else:
                self.client.update_run(run_id, status="RUNNING")
                self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in all_tags.items()])
            return run_id

        pending_id = PENDING_PREFIX + key
        self.run_names[pending_id] = run_name
        run_id = self._write(pending_id, "start run (params, tags)", open_run, opens_run=True)
        if run_id is None:
            return pending_id
        self.run_names[run_id] = run_name
        return run_id

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        """Steps at which `key` was already logged on a run (empty for a new, pending or unreadable run)."""
        if run_id.startswith(PENDING_PREFIX):
            return set()
        try:
            return {int(metric.step) for metric in self.client.get_metric_history(run_id, key)}
        except Exception:  # best effort: only used to report wasted work
            return set()

    def log_metrics(self, run_id: str, values: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)  # taken now, so a replayed metric keeps the time it was measured
        batch = [Metric(k, float(v), now, step or 0) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if batch:
            what = f"metrics {', '.join(m.key for m in batch)}" + (f" at step {step}" if step else "")
            self._write(run_id, what, lambda real_id: self.client.log_batch(real_id, metrics=batch))

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, redact(str(v))) for k, v in tags.items()]
        self._write(run_id, f"tags {', '.join(tags)}", lambda real_id: self.client.log_batch(real_id, tags=batch))

    def log_artifacts(self, run_id: str, files: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in files:
            self._write(run_id, f"artifact {Path(path).name}", lambda real_id, path=path: self.client.log_artifact(real_id, str(path), artifact_path))

    def finish(self, run_id: str, status: str = "FINISHED", error: str | None = None) -> None:
        tags = {STATUS_TAG: status.lower()}
        if error:
            tags[ERROR_TAG] = error[:5000]
        self.set_tags(run_id, tags)
        self._write(run_id, f"status {status}", lambda real_id: self.client.set_terminated(real_id, status=status))

    def flush(self) -> bool:
        """Replay queued writes in order if the server answers; True when nothing is left queued."""
        if not self.queue:
            return True
        if time.monotonic() < self._next_try:
            return False
        if health_problem(self.uri):
            self._next_try = time.monotonic() + self.cooldown_s
            return False
        replayed = 0
        while self.queue:
            item = self.queue[0]
            try:
                self._apply(item)
            except Exception as err:  # noqa: BLE001 - classified below; a tracking error must not end the sweep
                if is_transient(err) and self._count_failure_while_up(item):
                    self._next_try = time.monotonic() + self.cooldown_s
                    return False
                self._refuse(item, err)
            self.queue.pop(0)
            replayed += 1
        self.warn(f"lepton-ray: MLflow at {redact(self.uri)} answers again; logged {replayed} queued write(s)")
        return True

    def unlogged(self) -> list[str]:
        """What could not be logged: refused writes, then writes still queued ('run: what')."""
        return self.lost + [f"{self._describe(item.run_id)}: {item.what}" for item in self.queue]

    def report_unlogged(self) -> list[str]:
        """Flush now, then warn with one line per write that could not be logged (each line once, however
        often this is called: the sweep's callback and its driver both call it), and return all of them."""
        self._next_try = 0.0
        self.flush()
        missing = self.unlogged()
        new_lines = [line for line in missing if line not in self._warned]
        if new_lines:
            self.warn(f"lepton-ray: warning: {len(new_lines)} write(s) could not be logged to MLflow at {redact(self.uri)}:")
            for line in new_lines:
                self.warn(f"  {line}")
            self._warned.update(new_lines)
        return missing

    def _write(self, run_id: str, what: str, action: Callable[[str], Any], opens_run: bool = False) -> Any:
        """`action(real run id)` now, with retries; queued (returning None) while MLflow is unreachable."""
        item = QueuedWrite(run_id, what, action, opens_run)
        if self.flush():
            for attempt in range(self.retries + 1):
                try:
                    return self._apply(item)
                except Exception as err:  # noqa: BLE001 - classified here; a tracking error must not end the sweep
                    if not is_transient(err):
                        self._refuse(item, err)
                        return None
                    last_error = err
                    if attempt < self.retries:
                        time.sleep(self.backoff_s * 2**attempt)
            self._next_try = time.monotonic() + self.cooldown_s
            self.warn(
                f"lepton-ray: MLflow at {redact(self.uri)} unreachable ({redact(str(last_error).splitlines()[0][:200])}); "
                "training goes on, writes are queued and replayed when it answers"
            )
        self.queue.append(item)
        return None

    def _apply(self, item: QueuedWrite) -> Any:
        if not item.opens_run:
            return item.action(self._resolve(item.run_id))
        self._resolved[item.run_id] = item.action(item.run_id)
        return self._resolved[item.run_id]

    def _resolve(self, run_id: str) -> str:
        if not run_id.startswith(PENDING_PREFIX):
            return run_id
        if run_id not in self._resolved:
            raise ValueError(f"its run was never created in MLflow ({run_id})")
        return self._resolved[run_id]

    def _count_failure_while_up(self, item: QueuedWrite) -> bool:
        """True to keep retrying; a write that keeps failing while the server is healthy is given up."""
        if health_problem(self.uri):
            return True
        item.failures_while_up += 1
        return item.failures_while_up < self.max_failures_while_up

    def _refuse(self, item: QueuedWrite, err: Exception) -> None:
        line = f"{self._describe(item.run_id)}: {item.what} ({redact(str(err).splitlines()[0][:200]) if str(err) else type(err).__name__})"
        self.lost.append(line)
        self.warn(f"lepton-ray: warning: MLflow refused a write, not retried: {line}")

    def _describe(self, run_id: str) -> str:
        name = self.run_names.get(run_id)
        real_id = self._resolved.get(run_id, run_id)
        return f"{name} ({real_id})" if name else real_id

    def run_url(self, run_id: str) -> str:
        return f"{redact(self.uri)} experiment {self.experiment!r} ({self.experiment_id}) run {run_id}"
