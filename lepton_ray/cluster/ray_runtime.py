"""Starting or joining Ray: a local cluster (dashboard on loopback, token auth on), or an existing one."""

from __future__ import annotations

import logging
import os
import socket

from lepton_ray.console import DropNotice
from lepton_ray.errors import ConfigError


def cluster_address(address: str | None = None) -> str | None:
    """An explicit address wins; `RAY_ADDRESS` (set by `ray start` and Ray Jobs) comes next."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str, field: str = "--address", timeout_s: float = 3.0) -> None:
    """Fail in seconds when nothing listens at a cluster address (`HOST:PORT`, `ray://HOST:PORT`).

    `auto` is left to Ray. Without this, `ray.init` waits, then fails after the teacher stage and
    the MLflow parent run have started.
    """
    if address == "auto":
        return
    if address.startswith(("http://", "https://")):
        raise ConfigError(
            f"{field}: {address} is a dashboard address (what `lepton-ray submit` takes); sweep and train join a cluster "
            "by its GCS address HOST:6379, ray://HOST:10001 or auto"
        )
    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{field}: {address!r} is not a Ray address; use HOST:PORT of the head (e.g. 10.0.0.5:6379), ray://HOST:10001 or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(f"{field}: no Ray cluster answers at {address} ({err.strerror or err}); start one with `ray start --head` or fix the address") from None


def init_ray(address: str | None = None, py_modules: list[str] | None = None) -> None:
    """Join a running cluster, or start a local one whose dashboard and Jobs API listen on 127.0.0.1 only.

    Ray 2.60 turns token auth on for a new local cluster unless RAY_AUTH_MODE says otherwise, so the
    dashboard API and Ray's own gRPC ports (Ray binds those to all interfaces: firewall them, see
    docs/operations.md) refuse callers without the token in ~/.ray/auth_token. The dashboard stays on:
    without it Tune-stopped trials leak placement groups (STACK.md). Worker logs stay in Ray's
    session folder unless LEPTON_RAY_WORKER_LOGS=1; failures still reach the driver as exceptions
    and land in MLflow. `py_modules` (the workflow's `user_code`) go to every worker of this job
    through its runtime_env; a process that already joined Ray keeps the runtime_env it joined with.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress line replaces Tune's tables
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    target = cluster_address(address)
    worker_logs = os.environ.get("LEPTON_RAY_WORKER_LOGS", "0") == "1"
    runtime_env = {"py_modules": py_modules} if py_modules else None
    if target:
        ray.init(address=target, logging_level="WARNING", log_to_driver=worker_logs, runtime_env=runtime_env)
        return
    # lepton-ray turns token auth on for its local cluster on purpose (docstring): Ray's notice about it is not news.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(DropNotice("Token authentication is enabled for this Ray cluster"))
    ray.init(
        address="local",  # a cluster of its own: without it, ray.init joins the newest `ray start` on this machine
        num_cpus=os.cpu_count(),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        logging_level="WARNING",
        log_to_driver=worker_logs,
        runtime_env=runtime_env,
    )


def cluster_resources() -> tuple[float, float]:
    import ray

    resources = ray.cluster_resources()
    return float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
