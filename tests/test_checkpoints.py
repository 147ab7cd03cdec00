"""Checkpoint files: atomic writes, hostile pickles refused without running, truncated ones fall back."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from lepton_ray.checkpoints import load_safe, save_atomic
from lepton_ray.cli import main
from lepton_ray.errors import CheckpointError, StorageFullError
from lepton_ray.trial.files import TRIAL_STATE_FILE, newest_readable_state

MARKER = Path("/tmp/lepton_ray_hostile_marker")


class _SideEffect:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def test_pickled_object_with_side_effects_is_refused_and_never_runs(tmp_path):
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": _SideEffect()}, handle)
    with pytest.raises(CheckpointError, match="not plain weights"):
        load_safe(path, "teacher.checkpoint")
    assert not MARKER.exists()


def test_hostile_teacher_checkpoint_makes_the_cli_exit_2_naming_the_field(tmp_path, write_workflow, capsys):
    MARKER.unlink(missing_ok=True)
    evil = tmp_path / "teacher.pt"
    torch.save({"model": "cnn_large", "payload": _SideEffect()}, evil)
    workflow = write_workflow({"teacher.checkpoint": str(evil), "teacher.train": None})
    assert main(["train", str(workflow)]) == 2
    err = capsys.readouterr().err
    assert "teacher.checkpoint" in err and err.count("\n") == 1
    assert not MARKER.exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "state.pt"
    save_atomic({"weights": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or not a torch checkpoint"):
        load_safe(path)


def test_full_disk_is_a_clear_error_and_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    save_atomic({"version": torch.tensor(1)}, path)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(StorageFullError, match=r"^storage: no space left .* --resume$"):
        save_atomic({"version": torch.tensor(2)}, path)
    assert load_safe(path)["version"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_torch_saves_errno_less_error_on_a_full_device_is_recognised_as_a_full_disk(tmp_path, monkeypatch):
    """On a real full tmpfs torch.save raised RuntimeError("... unexpected pos ...") and
    "basic_ios::clear: iostream error", no errno: the device's free space decides."""
    import shutil

    path = tmp_path / "state.pt"

    def errno_less(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5056 vs 4952")

    monkeypatch.setattr(torch, "save", errno_less)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(1 << 20, (1 << 20) - 4096, 4096))
    with pytest.raises(StorageFullError, match=r"^storage: no space left"):
        save_atomic({"version": torch.tensor(2)}, path)
    assert not list(tmp_path.iterdir()), "the partial file is removed"
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(1 << 40, 1 << 20, (1 << 40) - (1 << 20)))
    with pytest.raises(RuntimeError, match="unexpected pos"):
        save_atomic({"version": torch.tensor(2)}, path)  # plenty of space: the error is not about the disk


def test_resume_falls_back_to_the_previous_checkpoint_when_the_newest_is_truncated(tmp_path):
    older, newer = tmp_path / "checkpoint_2026-01-01_00-00-01", tmp_path / "checkpoint_2026-01-01_00-00-02"
    save_atomic({"next_epoch": 1}, older / TRIAL_STATE_FILE)
    save_atomic({"next_epoch": 2}, newer / TRIAL_STATE_FILE)
    (newer / TRIAL_STATE_FILE).write_bytes((newer / TRIAL_STATE_FILE).read_bytes()[:50])
    warnings = []
    assert newest_readable_state([newer, older], warn=warnings.append)["next_epoch"] == 1
    assert "checkpoint_2026-01-01_00-00-02" in warnings[0]
    (older / TRIAL_STATE_FILE).write_bytes(b"")
    with pytest.raises(CheckpointError, match="no kept checkpoint is readable"):
        newest_readable_state([newer, older], warn=warnings.append)
