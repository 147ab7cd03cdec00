"""Lineage tags every sweep and trial run carries: data, models, teacher hash, seed, world size, code commit."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from lepton_ray.config import WorkflowConfig

if TYPE_CHECKING:
    from lepton_ray.trial.teacher import Teacher


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def lineage_tags(wf: WorkflowConfig, teachers: list[Teacher]) -> dict[str, str]:
    return {
        "dataset": wf.data.name,
        "teacher": wf.teacher.name,
        "student": wf.student.name,
        "teacher_sha256": teachers[0].sha256,
        "seed": str(wf.training.seed),
        "world_size": str(wf.resources.num_workers),
        "git_commit": git_commit(),
        "workflow": wf.name,
    }
