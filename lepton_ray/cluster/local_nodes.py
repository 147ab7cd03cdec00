"""Several Ray nodes on one machine (`ray.cluster_utils.Cluster`): what the multi-node test and
`benchmarks/sweep_scale.py` run sweeps on, so placement, storage paths and node loss are exercised.

Each node is its own raylet with logical CPUs. The head gets no CPU: a sweep's driver joins it, and
no trial lands there, so a worker node can be removed without touching the driver.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from typing import Iterator


def free_port() -> int:
    """A loopback port nothing listens on (bound, read, released)."""
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def local_nodes(worker_nodes: int, cpus_per_node: float = 1) -> Iterator["ray.cluster_utils.Cluster"]:  # noqa: F821
    """A head (0 CPUs, dashboard on a free loopback port) and `worker_nodes` nodes; the cluster is torn down after.

    Ray writes the newest cluster's address under its temp folder, and a bare `ray.init()` on this machine
    then joins that cluster: the nodes get a private temp folder (`RAY_TMPDIR`), so other Ray users here
    (tests, benchmarks) keep starting their own.
    """
    import ray
    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="lr-ray-")  # short: Ray's socket paths live under it
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    ray.shutdown()  # a local session joined earlier in this process
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port(),
    })
    try:
        for _ in range(worker_nodes):
            cluster.add_node(num_cpus=cpus_per_node)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if previous is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = previous
        shutil.rmtree(temp_dir, ignore_errors=True)
