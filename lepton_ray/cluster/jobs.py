"""Ray Jobs: send a sweep to a running cluster, follow it, ask its status, stop it.

The job's working_dir is staged here: a copy of the `lepton_ray` package plus the resolved
workflow (overrides applied) and its search space, so the cluster runs exactly what was
validated here, with the code the submitter has. Token auth stays on: the client sends the
token Ray itself would use ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TextIO

import yaml

from lepton_ray.config import WorkflowConfig

from lepton_ray.search_space import SearchSpace
from lepton_ray.errors import ConfigError, LeptonError

JOB_DIR = "lepton_job"
WORKFLOW_FILE = f"{JOB_DIR}/workflow.yaml"
SPACE_FILE = f"{JOB_DIR}/search_space.yaml"
STAGING_EXCLUDES = ("__pycache__", "*.pyc")
SUCCEEDED = "SUCCEEDED"


class ClusterError(LeptonError):
    """The cluster cannot be reached, refused the auth token, or does not know the job."""


def check_cluster_paths(wf: WorkflowConfig) -> None:
    """Relative paths would resolve inside the job's temporary working_dir and vanish with it."""
    teachers = [("teacher", wf.teacher)] + [(f"extra_teachers.{i}", t) for i, t in enumerate(wf.extra_teachers)]
    paths = [("output_dir", wf.output_dir), ("data.root", wf.data.root)]
    paths += [(f"{field}.checkpoint", teacher.checkpoint) for field, teacher in teachers]
    for field, path in paths:
        if path is not None and not Path(path).is_absolute():
            raise ConfigError(
                f"{field}: {str(path)!r} is relative, so on the cluster it would land in the job's temporary working dir; "
                f"use an absolute path on storage every node mounts (--set {field}=/shared/...)"
            )
    store = local_store_path(wf.tracking.uri)
    if store is not None and not store.is_absolute():
        raise ConfigError(
            f"tracking.uri: {wf.tracking.uri!r} is a relative local store; point it at an MLflow server "
            "(--set tracking.uri=http://HOST:5000) or an absolute path on shared storage"
        )


def local_store_path(uri: str) -> Path | None:
    """The file path behind a local MLflow URI (`sqlite:///x.db`, `file:x`, `mlruns`); None for servers."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file:").removeprefix("//"))
    return None if "://" in uri else Path(uri)


def check_for_cluster(wf: WorkflowConfig) -> SearchSpace | None:
    """The checks that hold anywhere; files, data and the tracking server are checked by the job, on the cluster."""
    from lepton_ray.checks import check_parsed, check_resources, check_search_space, search_space_for
    from lepton_ray.tracking.uris import check_uri_form

    check_parsed(wf)
    check_uri_form(wf.tracking.uri)
    check_resources(wf, None, None)
    check_cluster_paths(wf)
    space = search_space_for(wf)
    if space is not None:
        check_search_space(wf, space)
    return space


def stage_job(wf: WorkflowConfig, space: SearchSpace | None, folder: Path, sweep_flags: list[str]) -> str:
    """Fill `folder` with the package and the resolved workflow; returns the job's entrypoint."""
    package = Path(__file__).resolve().parents[1]
    shutil.copytree(package, folder / package.name, ignore=shutil.ignore_patterns(*STAGING_EXCLUDES))
    (folder / JOB_DIR).mkdir()
    workflow = wf.to_dict()
    workflow["user_code"] = [stage_user_code(Path(path), folder) for path in wf.user_code]
    if space is not None:
        workflow["sweep"]["space"] = SPACE_FILE
        (folder / SPACE_FILE).write_text(yaml.safe_dump(space.model_dump(mode="json"), sort_keys=False))
    (folder / WORKFLOW_FILE).write_text(yaml.safe_dump(workflow, sort_keys=False))
    # `python -m` runs the staged package from the job's working_dir, installed or not on the node.
    return shlex.join(["python", "-m", "lepton_ray.cli", "sweep", WORKFLOW_FILE, *sweep_flags])


def stage_user_code(path: Path, folder: Path) -> str:
    """Copy one `user_code` entry to the top of the job's working_dir: the job's driver imports it from
    there, and passes it on to every worker as py_modules. Returns the staged name."""
    target = folder / path.name
    if target.exists():
        raise ConfigError(f"user_code: {path.name!r} appears twice or clashes with lepton-ray's own files in the job; rename it")
    if path.is_dir():
        shutil.copytree(path, target, ignore=shutil.ignore_patterns(*STAGING_EXCLUDES))
    else:
        shutil.copy2(path, target)
    return path.name


def cluster_token_header() -> dict[str, str]:
    """Ray sends its token only when this process started in token mode; send it whenever one exists."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    from ray._raylet import AuthenticationTokenLoader

    return AuthenticationTokenLoader.instance().get_token_for_http_header(ignore_auth_mode=True)


def connect(address: str):
    """A `JobSubmissionClient` for the dashboard at `address` (http://HEAD:8265), or a `ClusterError`."""
    from ray.job_submission import JobSubmissionClient

    return _call(address, None, lambda: JobSubmissionClient(address, headers=cluster_token_header()))


def _call(address: str, job_id: str | None, request: Callable[[], Any]) -> Any:
    """Turn the Jobs SDK's failures into one-line errors that name the flag and the fix."""
    from ray.exceptions import AuthenticationError

    try:
        return request()
    except AuthenticationError:
        raise ClusterError(
            f"--address: the cluster at {address} refused the auth token; put the head's token "
            "(`ray get-auth-token` there) in ~/.ray/auth_token or $RAY_AUTH_TOKEN"
        ) from None
    except OSError as err:
        raise ClusterError(f"--address: cannot reach the Ray Jobs API at {address} ({err}); check the address and the port-forward") from None
    except RuntimeError as err:
        if job_id is not None and "404" in str(err):
            raise ClusterError(f"JOB: no job {job_id!r} on the cluster at {address}; check the id (`ray job list --address {address}`)") from None
        raise ClusterError(f"--address: the cluster at {address} refused the request ({(str(err).splitlines() or [type(err).__name__])[0]})") from None


def submit(wf: WorkflowConfig, space: SearchSpace | None, address: str, sweep_flags: list[str]) -> str:
    """Submit the sweep as a Ray Job; returns the submission id. The working_dir is uploaded here."""
    client = connect(address)
    with tempfile.TemporaryDirectory(prefix="lepton-job-") as staging:
        entrypoint = stage_job(wf, space, Path(staging), sweep_flags)
        return _call(address, None, lambda: client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": staging}, metadata={"workflow": wf.name}))


def follow(address: str, job_id: str, out: TextIO = sys.stdout, poll_s: float = 1.0) -> str:
    """Print the job's logs until it ends; returns its final status (e.g. SUCCEEDED, FAILED)."""
    client = connect(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    _call(address, job_id, lambda: asyncio.run(tail()))
    while not (details := job_details(address, job_id, client)).status.is_terminal():
        time.sleep(poll_s)  # the log stream can close a moment before the status turns terminal
    return details.status.value


def job_details(address: str, job_id: str, client: Any = None):
    """Ray's `JobDetails`: status, message, entrypoint, start/end times."""
    client = client or connect(address)
    return _call(address, job_id, lambda: client.get_job_info(job_id))


def stop(address: str, job_id: str) -> bool:
    """Ask the job to stop; False when it had already ended."""
    client = connect(address)
    return _call(address, job_id, lambda: client.stop_job(job_id))
