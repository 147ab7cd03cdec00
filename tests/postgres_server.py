"""A throwaway PostgreSQL server for tests: `initdb` + `pg_ctl` into a fresh folder, on a free loopback port.

Debian's `postgresql` package puts its binaries under /usr/lib/postgresql/<version>/bin (not on PATH);
PostgreSQL refuses to run as root, so under root the server runs as the package's `postgres` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

APT_PACKAGE = "postgresql"
SERVER_USER = "postgres"


def postgres_bin() -> Path | None:
    """The folder holding `initdb` and `pg_ctl`: PATH first, then Debian's versioned folders (newest)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(Path(path).parts[3]))
    return Path(found[-1]).parent if found else None


def missing() -> str | None:
    """Why a PostgreSQL test cannot run here (a skip reason naming the fix), or None."""
    if postgres_bin() is None:
        return f"PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install {APT_PACKAGE} (`make test` does, as root)"
    try:
        import psycopg  # noqa: F401  (SQLAlchemy 2's driver for postgresql:// URIs, which MLflow uses)
    except ImportError:
        return "psycopg not installed: pip install -e '.[dev]' (it pins psycopg[binary])"
    return None


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres_database(port: int, database: str = "mlflow") -> Iterator[str]:
    """A running server with one empty database; yields its SQLAlchemy URI; stopped and deleted after."""
    import psycopg

    bin_dir = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="lr-pg-"))  # under /tmp, which the server user can reach
    if os.geteuid() == 0:
        shutil.chown(folder, SERVER_USER)
    data, log = folder / "data", folder / "server.log"
    run = lambda *command: subprocess.run(_as_server_user([str(bin_dir / command[0]), *command[1:]]), check=True, capture_output=True, text=True)
    try:
        run("initdb", "-D", str(data), "-U", SERVER_USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        run("pg_ctl", "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start")
        try:
            with psycopg.connect(host="127.0.0.1", port=port, user=SERVER_USER, dbname="postgres", autocommit=True) as admin:
                admin.execute(f"CREATE DATABASE {database}")
            yield f"postgresql://{SERVER_USER}@127.0.0.1:{port}/{database}"
        finally:
            run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
    except subprocess.CalledProcessError as err:
        raise AssertionError(f"{' '.join(err.cmd)} failed: {err.stderr}\n{log.read_text()[-3000:] if log.exists() else ''}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
