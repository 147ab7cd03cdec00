"""Where a sweep lives under the workflow's `run_dir`:

  sweep/study.db       Optuna study: the source of truth for which trials exist and how they ended
  sweep/trials/trial-NNNN/  Ray Train runs named by Optuna number (checkpoints; resumable)
  sweep/tune/          Ray Tune's bookkeeping for the current attempt (replaced on --resume)
  sweep/export/        the selection report and the int8 files of the pick
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from lepton_ray.config import WorkflowConfig
from lepton_ray.errors import ConfigError


@dataclass(frozen=True)
class SweepPaths:
    root: Path

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def study(self) -> Path:
        return self.root / "study.db"

    def key(self, sweep_id: str) -> str:
        """MLflow key of the sweep's parent run: a resumed sweep finds its run by it, while a sweep
        started over in the same folder (a new study, so a new `sweep_id`) gets new runs."""
        return f"sweep:{self.root.resolve()}#{sweep_id}"


def sweep_paths(wf: WorkflowConfig, single: bool) -> SweepPaths:
    return SweepPaths(wf.run_dir / (f"train-{time.strftime('%Y%m%d-%H%M%S')}" if single else "sweep"))


def check_storage(paths: SweepPaths, resume: bool) -> None:
    if resume and not paths.study.is_file():
        raise ConfigError(f"--resume: no sweep to resume under {paths.root}; run without --resume to start one")
    if not resume and paths.study.is_file():
        raise ConfigError(f"sweep: {paths.root} already holds a sweep; pass --resume to continue it, or delete the folder to start over")
