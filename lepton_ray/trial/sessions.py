"""Where the one trial loop runs: a Ray Train DDP worker, or in-process for single-worker trials.

A Ray Train V2 trial pays a fixed ~13 s on 2 cores (`benchmarks/results/ddp_fixed_cost.json`; 10 s of it
a bare `TorchTrainer.fit()` starting a controller and worker processes), for a few seconds of compute on digits. A trial that asks for one
worker gains nothing from a process group, so it runs the same loop inside Tune's trial actor
(`InProcessSession`): same reports, same checkpoint files under the same run folder (so
`--resume` and failure restarts work the same way), no extra processes. Trials with several
workers keep real DDP through `RayTrainSession`.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from lepton_ray.data.batches import world
from lepton_ray.checkpoints import save_atomic

CHECKPOINT_PREFIX = "checkpoint_"
CHECKPOINT_PATH_KEY = "checkpoint_path"
"""Metric key of the checkpoint a report saved (Ray's `TuneReportCallback` uses the same)."""
CHECKPOINTS_KEPT = 2
"""At least two, so a truncated newest checkpoint falls back to the one before."""


class TrialSession(Protocol):
    device: torch.device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move to the device (and wrap in DDP when distributed)."""

    def checkpoint_folders(self) -> list[Path]:
        """Kept checkpoints of this trial to resume from, any order; empty on a fresh start."""

    def report(self, epoch_metrics: dict[str, Any], files: dict[str, Any] | None) -> None:
        """Report one epoch; rank 0 persists `files` (name -> torch-saveable payload) as a checkpoint."""


def _checkpoint_folders(run_folder: Path) -> list[Path]:
    return [folder for folder in run_folder.iterdir() if folder.is_dir() and folder.name.startswith(CHECKPOINT_PREFIX)]


def _write_files(folder: Path, files: dict[str, Any]) -> None:
    for name, payload in files.items():
        save_atomic(payload, folder / name)


class RayTrainSession:
    """A DDP worker of a `TorchTrainer`: Ray Train keeps the checkpoints and restarts failed workers.

    Only reports that carry a checkpoint reach `Result.metrics` in Ray Train V2, so anything the
    driver must read after `fit()` (final metrics, divergence) goes with one.
    """

    def __init__(self, run_folder: str | None = None) -> None:
        import ray.train.torch

        self.device = ray.train.torch.get_device()
        self.run_folder = Path(run_folder) if run_folder else None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def checkpoint_folders(self) -> list[Path]:
        """On a file system every checkpoint folder of the run counts, also one Ray had uploaded but not yet
        registered when a worker died (a truncated copy falls back); on remote storage, Ray's latest."""
        import ray.train

        if self.run_folder is not None and self.run_folder.is_dir():
            return _checkpoint_folders(self.run_folder)
        checkpoint = ray.train.get_checkpoint()
        return [] if checkpoint is None else [Path(checkpoint.to_directory())]

    def report(self, epoch_metrics: dict[str, Any], files: dict[str, Any] | None) -> None:
        import ray.train

        if world()[0] != 0 or not files:
            ray.train.report(epoch_metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            _write_files(Path(folder), files)
            ray.train.report(epoch_metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


class InProcessSession:
    """The loop in the calling process (Tune's trial actor, or a plain script): no process group.

    Checkpoints are folders `checkpoint_<timestamp>` under `run_folder`, written whole to a
    temporary name and renamed, the newest `CHECKPOINTS_KEPT` kept: the layout Ray Train uses.
    """

    def __init__(self, run_folder: Path, on_report: Callable[[dict[str, Any]], None], device: torch.device | None = None) -> None:
        self.run_folder = Path(run_folder)
        self.on_report = on_report
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.last_metrics: dict[str, Any] = {}

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def checkpoint_folders(self) -> list[Path]:
        return _checkpoint_folders(self.run_folder) if self.run_folder.is_dir() else []

    def report(self, epoch_metrics: dict[str, Any], files: dict[str, Any] | None) -> None:
        """Like Ray Train's `TuneReportCallback`, a report with a checkpoint carries its path."""
        reported = dict(epoch_metrics)
        if files:
            reported[CHECKPOINT_PATH_KEY] = str(self._save_checkpoint(files))
        self.last_metrics = reported
        self.on_report(reported)

    def _save_checkpoint(self, files: dict[str, Any]) -> Path:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S.%f")
        self.run_folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.run_folder))
        final = self.run_folder / f"{CHECKPOINT_PREFIX}{stamp}"
        try:
            _write_files(staging, files)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for stale in sorted(self.checkpoint_folders(), key=lambda f: f.name)[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(stale, ignore_errors=True)
        return final
