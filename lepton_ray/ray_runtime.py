"""Starting or joining Ray: a local cluster on loopback, or an existing one via `address="auto"`."""

from __future__ import annotations

import os


def cluster_address(address: str | None = None) -> str | None:
    """An explicit address wins; `RAY_ADDRESS` (set by `ray start` and Ray Jobs) comes next."""
    return address or os.environ.get("RAY_ADDRESS") or None


def init_ray(address: str | None = None) -> None:
    """Join a running cluster, or start a local one bound to 127.0.0.1 with the dashboard on.

    The dashboard stays on: without it Tune-stopped trials leak placement groups (STACK.md).
    Worker logs stay in Ray's session folder unless LEPTON_RAY_WORKER_LOGS=1; failures still
    reach the driver as exceptions and land in MLflow.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress line replaces Tune's tables
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    target = cluster_address(address)
    worker_logs = os.environ.get("LEPTON_RAY_WORKER_LOGS", "0") == "1"
    if target:
        ray.init(address=target, logging_level="WARNING", log_to_driver=worker_logs)
        return
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        logging_level="WARNING",
        log_to_driver=worker_logs,
    )


def cluster_resources() -> tuple[float, float]:
    import ray

    resources = ray.cluster_resources()
    return float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
