"""Where MLflow is: the tracking URI (environment over workflow), credentials kept out of logs,
reachability checked before a sweep starts, and where a SQLite store keeps its artifacts."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from lepton_ray.errors import TrackingError


_URI_SET_BY_TRACKER: str | None = None
"""`mlflow.set_tracking_uri` also writes `MLFLOW_TRACKING_URI`; the value a `Tracker` put there is not the user's."""


def tracking_uri(workflow_uri: str) -> str:
    """`MLFLOW_TRACKING_URI` set by the user wins over the workflow, as MLflow users expect."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    return from_env if from_env and from_env != _URI_SET_BY_TRACKER else workflow_uri


def use_for_mlflow_fluent_api(uri: str) -> None:
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


def _from_env(uri: str) -> str:
    return " (set by $MLFLOW_TRACKING_URI, which overrides the workflow)" if os.environ.get("MLFLOW_TRACKING_URI") == uri else ""


def check_uri_form(uri: str) -> None:
    """What holds wherever the URI is used (here or on a cluster): a known store scheme, a SQLite URI naming a file."""
    scheme = _scheme(uri)
    if scheme not in STORE_SCHEMES:
        raise TrackingError(f"tracking.uri: {redact(uri)} has no MLflow tracking store for scheme {scheme!r}; use one of {', '.join(STORE_SCHEMES)}{_from_env(uri)}")
    if uri.startswith("sqlite:") and (not uri.startswith("sqlite:///") or not uri.removeprefix("sqlite:///")):
        shown = "sqlite:///" + (uri.removeprefix("sqlite:").lstrip("/") or "mlflow.db")
        raise TrackingError(
            f"tracking.uri: {redact(uri)} names no database file; a SQLite URI has three slashes before a relative path "
            f"and four before an absolute one, e.g. {shown}{_from_env(uri)}"
        )


DEFAULT_REACH_TIMEOUT_S = 3.0
"""A server that has not answered /health by then is down for a sweep's purposes; keeps `validate` fast."""


def check_reachable(uri: str, timeout_s: float = DEFAULT_REACH_TIMEOUT_S) -> None:
    """Fail before any trial starts when the tracking URI is unusable or its server does not answer."""
    from_env = _from_env(uri)
    check_uri_form(uri)
    if uri.startswith("sqlite:///"):
        db_path = Path(uri.removeprefix("sqlite:///"))
        if not db_path.parent.exists() and str(db_path.parent) not in ("", "."):
            raise TrackingError(f"tracking.uri: folder {str(db_path.parent)!r} for the SQLite file does not exist; create it or change the URI{from_env}")
    problem = health_problem(uri, timeout_s)
    if problem and _scheme(uri) in DATABASE_SCHEMES:
        fix = "install it or name another driver in the URI" if problem.startswith(NO_DRIVER) else "start the database server or fix the URI"
        raise TrackingError(f"tracking.uri: cannot reach the MLflow database at {redact(uri)} ({problem}); {fix}{from_env}")
    if problem:
        raise TrackingError(f"tracking.uri: cannot reach MLflow at {redact(uri)} ({problem}); start the server or fix the URI{from_env}")


def artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store go next to the database file (MLflow's default is ./mlruns under
    whatever folder the process runs in, e.g. a Ray job's temporary working dir); servers decide their own."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = Path(uri.removeprefix("sqlite:///")).resolve()
    return (db_path.parent / "mlartifacts" / re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)).as_uri()


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else "file"


DATABASE_SCHEMES: dict[str, str] = {"postgresql": "connect_timeout", "mysql": "connect_timeout", "mssql": "timeout"}
"""Database stores MLflow reaches through SQLAlchemy, with the connect-timeout argument of their usual drivers."""


def health_problem(uri: str, timeout_s: float = 1.0) -> str | None:
    """Why an MLflow server does not answer 200 on /health, or its database does not take a connection;
    None when it does (and for local stores)."""
    if _scheme(uri) in DATABASE_SCHEMES:
        return database_problem(uri, timeout_s)
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(_without_credentials(uri.rstrip("/") + "/health"), timeout=timeout_s) as response:
            return None if response.status == 200 else f"answered {response.status} on /health"
    except (urllib.error.URLError, OSError, ValueError) as err:
        return redact(str(getattr(err, "reason", err)))


NO_DRIVER = "its database driver"


def database_problem(uri: str, timeout_s: float) -> str | None:
    """Why the database behind a `postgresql://`, `mysql://` or `mssql://` store takes no connection within
    `timeout_s` (a missing driver included); one connection, opened and closed, nothing written."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = None
    try:
        engine = sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args={DATABASE_SCHEMES[_scheme(uri)]: max(1, round(timeout_s))})
        with engine.connect():
            return None
    except ModuleNotFoundError as err:
        return f"{NO_DRIVER} {err.name!r} is not installed"
    except sqlalchemy.exc.DBAPIError as err:
        return redact(str(err.orig).strip().splitlines()[0][:200])
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as err:
        return redact(str(err).strip().splitlines()[0][:200])
    finally:
        if engine is not None:
            engine.dispose()


def _without_credentials(url: str) -> urllib.request.Request:
    match = re.match(r"(https?://)([^/@]+)@(.*)", url)
    if not match:
        return urllib.request.Request(url)
    import base64

    request = urllib.request.Request(match.group(1) + match.group(3))
    request.add_header("Authorization", "Basic " + base64.b64encode(match.group(2).encode()).decode())
    return request
