"""Writes to MLflow that outlive a tracking outage.

Each write is tried now, `retries` more times with a doubling backoff from `backoff_s`, then queued.
While anything is queued, new writes queue behind it (order is kept) and, at most every
`cooldown_s`, the queue is replayed once the server answers its health check. A write MLflow
refuses (a bad value, a missing run) is never retried; `unlogged()` lists it with what is still queued.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from lepton_ray.tracking.uris import health_problem, redact

TRANSIENT_MLFLOW_CODES = frozenset({
    "INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "IO_ERROR", "SERVICE_UNDER_MAINTENANCE", "DEADLINE_EXCEEDED",
    "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "COULD_NOT_ACQUIRE_LOCK",
})
"""MLflow error codes worth retrying; any other code (bad value, missing run, no permission) never succeeds on replay."""
PENDING_PREFIX = "pending:"
"""Run ids handed out for runs whose creation is queued; resolved to the real id when it is replayed."""


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


def warn_on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class WriteQueue:
    """Ordered writes to one MLflow server (see the module docstring); run ids may be `pending:` ids."""

    def __init__(
        self, uri: str, retries: int = 1, backoff_s: float = 1.0, cooldown_s: float = 5.0, max_failures_while_up: int = 3,
        warn: Callable[[str], None] = warn_on_stderr,
    ) -> None:
        self.uri = uri
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
        """Tune pickles its callbacks (and so the tracker and its queue): keep credentials out of `tuner.pkl`."""
        return {**self.__dict__, "uri": redact(self.uri), "warn": warn_on_stderr}

    def write(self, run_id: str, what: str, action: Callable[[str], Any], opens_run: bool = False) -> Any:
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
        return self.lost + [f"{self.describe(item.run_id)}: {item.what}" for item in self.queue]

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

    def resolve(self, run_id: str) -> str:
        """The real run id behind a `pending:` id (once its creation was replayed)."""
        if not run_id.startswith(PENDING_PREFIX):
            return run_id
        if run_id not in self._resolved:
            raise ValueError(f"its run was never created in MLflow ({run_id})")
        return self._resolved[run_id]

    def describe(self, run_id: str) -> str:
        name = self.run_names.get(run_id)
        real_id = self._resolved.get(run_id, run_id)
        return f"{name} ({real_id})" if name else real_id

    def _apply(self, item: QueuedWrite) -> Any:
        if not item.opens_run:
            return item.action(self.resolve(item.run_id))
        self._resolved[item.run_id] = item.action(item.run_id)
        return self._resolved[item.run_id]

    def _count_failure_while_up(self, item: QueuedWrite) -> bool:
        """True to keep retrying; a write that keeps failing while the server is healthy is given up."""
        if health_problem(self.uri):
            return True
        item.failures_while_up += 1
        return item.failures_while_up < self.max_failures_while_up

    def _refuse(self, item: QueuedWrite, err: Exception) -> None:
        line = f"{self.describe(item.run_id)}: {item.what} ({redact(str(err).splitlines()[0][:200]) if str(err) else type(err).__name__})"
        self.lost.append(line)
        self.warn(f"lepton-ray: warning: MLflow refused a write, not retried: {line}")
