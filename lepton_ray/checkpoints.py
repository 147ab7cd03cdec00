"""Safe checkpoint I/O: atomic writes, `weights_only` loads, one clear error for bad files."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from lepton_ray.errors import CheckpointError, StorageFullError


def save_atomic(obj: Any, path: Path) -> None:
    """Write to a temp file in the same folder, then rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if path.suffix == ".json":  # a table a person reads (in MLflow), not a torch payload
            Path(tmp_name).write_text(json.dumps(obj, indent=1) + "\n")
        else:
            torch.save(obj, tmp_name)
        os.replace(tmp_name, path)
    except BaseException as err:
        full = is_storage_full(err) or nearly_full(path.parent)  # measured before the partial file is removed
        Path(tmp_name).unlink(missing_ok=True)
        if full:
            raise StorageFullError(
                f"storage: no space left on the device holding {path.parent}; free space there (or set output_dir to a larger volume) "
                "and run the same command with --resume"
            ) from None
        raise


FULL_TEXTS = ("no space left on", "database or disk is full")
"""How ENOSPC reads once wrapped: the OS text (Ray, ours) and SQLite's (the Optuna study)."""
NEARLY_FULL_BYTES = 1 << 20


def is_storage_full(err: BaseException | None) -> bool:
    """ENOSPC, directly or as Ray's, SQLite's and our own wrappers report it, anywhere in the exception
    chain (Optuna re-raises SQLite's error as a generic StorageInternalError)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err).lower()
        if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or isinstance(err, StorageFullError) or any(t in text for t in FULL_TEXTS):
            return True
        err = err.__cause__ or err.__context__
    return False


def nearly_full(folder: Path) -> bool:
    """Under 1 MiB free where a write just failed. torch.save on a full disk raises a RuntimeError
    without errno ("unexpected pos ...", "iostream error"), so the device itself is asked."""
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def load_safe(path: Path, field: str = "checkpoint", mmap: bool = False) -> dict[str, Any]:
    """Load tensors and plain containers only; pickled code is refused, never run. `mmap`: tensors are mapped, not
    read, for a caller that wants the small entries only (a finished trial's metrics)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{field}: file {str(path)!r} not found; pass a checkpoint saved by lepton-ray")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        named = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"it names the Python object {named[1]}, which loading would call" if named else "it is a pickle the weights-only loader does not accept"
        raise CheckpointError(f"{field}: {path} holds objects that are not plain weights ({what}); refusing to load it: save tensors and plain containers only, as lepton-ray does") from None
    except Exception as err:  # a text or empty file fails in the unpickler with KeyError, IndexError, EOFError, ...
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else "no data"
        raise CheckpointError(f"{field}: {path} is empty, truncated or not a torch checkpoint ({type(err).__name__}: {reason}); re-create it") from None
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{field}: {path} does not hold a checkpoint mapping; re-create it with lepton-ray")
    return loaded
