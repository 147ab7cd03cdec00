"""Exposure: the local Ray cluster's dashboard and Jobs API listen on 127.0.0.1 only and ask for the
token, and credentials in a tracking URI reach no MLflow param or tag, no output and no Ray log.

lepton-ray starts no MLflow server of its own (the tests start theirs on 127.0.0.1); submitting to a
cluster with token auth on is tested in test_jobs.py."""

from __future__ import annotations

import os
import secrets
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lepton_ray.cli import main
from lepton_ray.tracking.uris import redact

from test_sweep import TINY
from test_tracking_server import mlflow_server  # noqa: F401  (fixture)


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on `port` (IPv4 and IPv6), from /proc/net."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)) if len(address) == 8 else address)
    return found


@pytest.mark.ray
def test_local_cluster_dashboard_listens_on_loopback_only_and_its_api_wants_the_token(ray_session):
    node = ray_session._private.worker._global_node
    host, port = node.address_info["webui_url"].split(":")
    assert host == "127.0.0.1"
    assert listening_addresses(int(port)) == {"127.0.0.1"}
    assert os.environ.get("RAY_AUTH_MODE") == "token", "Ray 2.60 turns token auth on for a new local cluster"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs/", timeout=10)
    assert refused.value.code == 401, "the Jobs API refuses a caller without the token"
    if node.node_ip_address != "127.0.0.1":
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{node.node_ip_address}:{port}/", timeout=5)


def test_redact_hides_credentials_in_uris_and_leaves_the_rest():
    assert redact("http://user:s3cret@127.0.0.1:5000") == "http://***@127.0.0.1:5000"
    assert redact("postgresql+psycopg2://me:pw@db/mlflow") == "postgresql+psycopg2://***@db/mlflow"
    assert redact("API request to https://tok@host/api failed") == "API request to https://***@host/api failed"
    assert redact("sqlite:///mlflow.db") == "sqlite:///mlflow.db"


@pytest.mark.mlflow_server
@pytest.mark.ray
def test_credentials_in_the_tracking_uri_reach_no_param_tag_output_or_ray_log(mlflow_server, ray_session, write_workflow, capfd, tmp_path):  # noqa: F811
    uri, store = mlflow_server
    password = f"s3cret-{secrets.token_hex(8)}"
    with_credentials = uri.replace("http://", f"http://lepton:{password}@")
    path = write_workflow({**TINY, "resources.num_workers": 1, "tracking.uri": with_credentials, "tracking.experiment": "exposure"})

    assert main(["train", str(path)]) == 0

    out, err = capfd.readouterr()
    assert password not in out + err
    assert "http://***@127.0.0.1:" in out, "the tracking URI is still shown, redacted"
    with sqlite3.connect(store / "mlflow.db") as db:  # the server's own store
        runs = db.execute("SELECT run_uuid FROM runs").fetchall()
        values = [row[0] for row in db.execute("SELECT value FROM params UNION ALL SELECT value FROM tags")]
        logged_uri = db.execute("SELECT value FROM params WHERE key = 'tracking.uri'").fetchall()
    assert len(runs) == 2, "the parent run and the trial's run"
    assert not [value for value in values if password in value]
    assert {row[0] for row in logged_uri} == {redact(with_credentials)}
    session = Path(ray_session._private.worker._global_node.get_session_dir_path())
    leaked = [str(f) for f in (session / "logs").rglob("*") if f.is_file() and password.encode() in f.read_bytes()]
    assert leaked == [], "Ray's logs hold the password"
    in_artifacts = [
        str(f.relative_to(tmp_path)) for folder in (store / "artifacts", tmp_path / "runs") for f in folder.rglob("*")
        if f.is_file() and password.encode() in f.read_bytes()
    ]
    assert in_artifacts == [], "trial files (student.pt embeds its workflow) or Tune state hold the password"
