"""A driver that notices when the Ray cluster under it goes away (`ray stop` in another shell, a crashed head).

Ray's driver waits for its GCS to come back (60 s, printing Ray's own GCS messages), then its core worker
ends the process: no Python code runs, so nothing would tell the user what happened or how to go on.
`ClusterWatch` probes the GCS port from a thread; after `misses` failed probes in a row it prints one
lepton-ray line and ends the driver, exactly as a killed driver ends, which `--resume` continues from
(the study and every trial's checkpoints are on disk; the MLflow runs left open are closed on resume).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import Callable

from lepton_ray.errors import ClusterLostError

LOST_EXIT_CODE = ClusterLostError.exit_code


def gcs_answers(address: str, timeout_s: float = 1.0) -> bool:
    """Whether anything accepts a TCP connection at the cluster's GCS address (HOST:PORT)."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
        return True
    except (OSError, ValueError):
        return False


def end_driver(line: str) -> None:
    print(f"lepton-ray: error: {line}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(LOST_EXIT_CODE)  # the main thread is blocked inside Ray; only the process can end here


class ClusterWatch:
    """Context manager around the part of a sweep that runs on Ray (`with ClusterWatch(how_to_go_on): tuner.fit()`)."""

    def __init__(self, how_to_go_on: str, interval_s: float = 1.0, misses: int = 3, on_lost: Callable[[str], None] = end_driver) -> None:
        self.how_to_go_on = how_to_go_on
        self.interval_s, self.misses, self.on_lost = interval_s, misses, on_lost
        self.address: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "ClusterWatch":
        import ray

        self.address = ray.get_runtime_context().gcs_address
        self._thread = threading.Thread(target=self._watch, name="lepton-cluster-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()

    def lost(self) -> bool:
        return self.address is not None and not gcs_answers(self.address)

    def message(self) -> str:
        return f"the Ray cluster at {self.address} went away mid-sweep (stopped or crashed); {self.how_to_go_on}"

    def _watch(self) -> None:
        failed = 0
        while not self._stop.wait(self.interval_s):
            failed = failed + 1 if self.lost() else 0
            if failed >= self.misses and not self._stop.is_set():
                self.on_lost(self.message())
                return
