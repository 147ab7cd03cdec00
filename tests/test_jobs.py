"""Ray Jobs: what `submit` ships and refuses (fast), then a real local head on loopback (slow).

The head is started here with `ray start` in its own temp dir and ports, with token auth on,
and stopped here by its own handle: every process it spawns carries a marker in its
environment, so teardown ends exactly those processes and checks that none is left.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lepton_ray import metrics
from lepton_ray.cli import main
from lepton_ray.cluster.local_nodes import free_port
from lepton_ray.config import load_workflow
from lepton_ray.search_space import load_search_space
from lepton_ray.cluster.jobs import SPACE_FILE, WORKFLOW_FILE, check_for_cluster, local_store_path, stage_job

from own_code import write_project
from test_sweep import TINY

BIN = Path(sys.executable).parent
MARKER_VAR = "LEPTON_TEST_RAY_HEAD"
ONE_WORKER = {"resources.num_workers": 1}
"""DDP itself is tested in test_sweep/test_trial; here one worker per trial keeps the 2-CPU head light."""
CLUSTER_ENV = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI")


@pytest.mark.parametrize(
    "uri, path",
    [
        ("sqlite:///mlflow.db", Path("mlflow.db")),
        ("sqlite:////shared/mlflow.db", Path("/shared/mlflow.db")),
        ("file:///shared/mlruns", Path("/shared/mlruns")),
        ("mlruns", Path("mlruns")),
        ("http://mlflow:5000", None),
        ("databricks://profile", None),
    ],
)
def test_local_store_path_is_the_file_behind_local_uris_and_none_for_servers(uri, path):
    assert local_store_path(uri) == path


def test_staged_job_holds_the_package_and_the_resolved_workflow(write_workflow, tmp_path):
    wf = load_workflow(write_workflow({**TINY, "sweep.num_samples": 2}), {"training.epochs": 1})
    space = check_for_cluster(wf)
    folder = tmp_path / "staged"
    folder.mkdir()
    entrypoint = stage_job(wf, space, folder, ["--no-export"])

    assert entrypoint == f"python -m lepton_ray.cli sweep {WORKFLOW_FILE} --no-export"
    package = Path(__file__).resolve().parents[1] / "lepton_ray"
    shipped = sorted(p.relative_to(folder / "lepton_ray") for p in (folder / "lepton_ray").rglob("*.py"))
    assert shipped == sorted(p.relative_to(package) for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    assert not list(folder.rglob("__pycache__"))
    staged = yaml.safe_load((folder / WORKFLOW_FILE).read_text())
    assert staged["sweep"]["space"] == SPACE_FILE
    assert staged["training"]["epochs"] == 1
    assert {k: v for k, v in staged.items() if k != "sweep"} == {k: v for k, v in wf.to_dict().items() if k != "sweep"}
    assert load_search_space(folder / SPACE_FILE) == space


@pytest.mark.parametrize(
    "override, field",
    [
        ("output_dir=runs", "output_dir"),
        ("tracking.uri=sqlite:///mlflow.db", "tracking.uri"),
        ("teacher.checkpoint=teachers/t.pt", "teacher.checkpoint"),
        ("training.epochs=0", "training.epochs"),
        ("tracking.uri=sqlite://mlflow.db", "tracking.uri"),
        ("tracking.model_name=a/b", "tracking.model_name"),
        ("name=..", "name"),
        ("compression.pruning.start_epoch=99", "compression.pruning.start_epoch"),
        ("distillation.losses=[{name: multi_teacher, options: {weights: [1, 2]}}]", "distillation.losses.0.options.weights"),
    ],
)
def test_submit_rejects_bad_input_before_contacting_any_cluster(write_workflow, capsys, override, field):
    closed = f"http://127.0.0.1:{free_port()}"
    code = main(["submit", str(write_workflow(TINY)), "--address", closed, "--set", override])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith(f"lepton-ray: error: {field}:")


@dataclass
class Head:
    address: str
    temp_dir: Path
    client_env: dict[str, str]


def owned_pids(marker: str, temp_dir: Path) -> list[int]:
    """Processes started for our head: they inherit the marker, or name our temp dir."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"{MARKER_VAR}={marker}".encode() in environ or str(temp_dir).encode() in cmdline:
            found.append(int(entry.name))
    return found


def stop_owned(marker: str, temp_dir: Path, grace_s: float = 5.0) -> list[int]:
    """SIGTERM our processes, SIGKILL what is left after `grace_s`; returns any that survived."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        for pid in owned_pids(marker, temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while owned_pids(marker, temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
    return owned_pids(marker, temp_dir)


@pytest.fixture(scope="module")
def ray_head():
    """A head on 127.0.0.1 with token auth, 2 CPUs, its own temp dir and ports (nothing shared)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="lrh-", dir="/tmp"))  # short: Ray's unix socket paths must stay < 108 chars
    marker, token = secrets.token_hex(8), secrets.token_hex(32)
    base = {k: v for k, v in os.environ.items() if k not in CLUSTER_ENV}
    base.update(PATH=f"{BIN}{os.pathsep}{base.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true")
    dashboard_port = free_port()
    ports = {
        "--port": free_port(), "--dashboard-port": dashboard_port, "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port(),
        "--node-manager-port": free_port(), "--object-manager-port": free_port(),
    }
    command = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
               "--num-cpus", "2", "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    command += [str(part) for pair in ports.items() for part in pair]
    head_env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, MARKER_VAR: marker}
    started = time.monotonic()
    log = temp_dir / "ray-start.log"
    try:
        with log.open("w") as out:
            code = subprocess.run(command, env=head_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, timeout=120).returncode
        assert code == 0, log.read_text()[-3000:]
        print(f"ray head up in {time.monotonic() - started:.1f}s")
        yield Head(f"http://127.0.0.1:{dashboard_port}", temp_dir, {**base, "RAY_AUTH_TOKEN": token})
    finally:
        started = time.monotonic()
        survivors = stop_owned(marker, temp_dir)
        print(f"ray head stopped in {time.monotonic() - started:.1f}s")
        assert survivors == [], f"processes of our head still running: {survivors}"
        shutil.rmtree(temp_dir, ignore_errors=True)


def cli(head: Head, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lepton-ray"), *args], env=env or head.client_env, capture_output=True, text=True, timeout=timeout)


def wait_for_status(head: Head, job_id: str, wanted: str, timeout_s: float = 90) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        line = cli(head, "status", job_id, "--address", head.address).stdout
        if wanted in line or time.monotonic() > deadline:
            return line
        time.sleep(2)


@pytest.mark.ray
def test_submitted_sweep_succeeds_on_the_head_and_its_trials_are_in_mlflow(ray_head, write_workflow):
    from lepton_ray.deploy.leaderboard import latest_sweep_run_id, trials_frame
    from lepton_ray.tracking.tracker import Tracker

    path = write_workflow({**TINY, **ONE_WORKER, "sweep.num_samples": 2})
    started = time.monotonic()
    done = cli(ray_head, "submit", str(path), "--address", ray_head.address, "--follow", "--no-export", timeout=400)
    print(f"submit --follow took {time.monotonic() - started:.1f}s")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    job_id = re.search(r"submitted (\S+)", done.stdout).group(1)
    assert f"job {job_id}: SUCCEEDED" in done.stdout
    assert "SUCCEEDED" in cli(ray_head, "status", job_id, "--address", ray_head.address).stdout

    wf = load_workflow(path)
    tracker = Tracker(wf.tracking.uri, wf.tracking.experiment, create=False)
    trials = trials_frame(tracker, latest_sweep_run_id(tracker))
    assert sorted(trials["trial"]) == [0, 1]
    assert (trials["status"] == "finished").all()
    assert trials[metrics.TEST_ACCURACY].between(0, 1).all()
    # The trials ran on our head, not on a cluster the job started by itself: their Tune actors logged there.
    worker_logs = ray_head.temp_dir.glob("session_*/logs/worker-*.out")
    assert any(b":actor_name:trial_driver" in log.read_bytes() for log in worker_logs)


@pytest.mark.ray
def test_a_users_own_code_travels_with_the_job_and_its_ddp_workers_on_the_head_import_it(ray_head, tmp_path, own_code):
    """Student and data factory from the user's files, teacher from their state_dict: staged into the job,
    then shipped by the job's driver to its 2 DDP workers per trial (runtime_env py_modules)."""
    path = write_project(tmp_path, own_code, {"training.epochs": 1, "sweep.num_samples": 1})  # one trial's 2 workers import them as a second's would
    done = cli(ray_head, "submit", str(path), "--address", ray_head.address, "--follow", "--no-export", timeout=400)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "1/1 done (0 failed" in done.stdout and "SUCCEEDED" in done.stdout


@pytest.mark.ray
def test_stop_ends_a_running_job(ray_head, write_workflow):
    path = write_workflow({**TINY, **ONE_WORKER, "training.epochs": 20})
    submitted = cli(ray_head, "submit", str(path), "--address", ray_head.address, "--no-export", timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.search(r"submitted (\S+)", submitted.stdout).group(1)

    stopped = cli(ray_head, "stop", job_id, "--address", ray_head.address)
    assert stopped.stdout.strip() == f"{job_id}: stop requested"
    assert "STOPPED" in wait_for_status(ray_head, job_id, "STOPPED")
    assert cli(ray_head, "stop", job_id, "--address", ray_head.address).stdout.strip() == f"{job_id}: already ended"


@pytest.mark.ray
def test_head_refuses_a_wrong_token_and_unknown_jobs_with_one_line_errors(ray_head):
    wrong = {**ray_head.client_env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    refused = cli(ray_head, "status", "raysubmit_x", "--address", ray_head.address, env=wrong)
    assert refused.returncode == 2
    assert [line for line in refused.stderr.splitlines() if line.startswith("lepton-ray: error: --address: ")] != []
    assert "refused the auth token" in refused.stderr

    unknown = cli(ray_head, "status", "raysubmit_unknown", "--address", ray_head.address)
    assert unknown.returncode == 2
    assert "JOB: no job 'raysubmit_unknown'" in unknown.stderr
