"""What a trial leaves in its run folder (`trials/trial-NNNN/checkpoint_*`), and reading it back:
the resumable trial state, the finalized student, a finished trial's metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from lepton_ray.checkpoints import load_safe
from lepton_ray.compress.pipeline import Compression
from lepton_ray.config import ModelSpec, WorkflowConfig
from lepton_ray.data.inputs import model_input_of
from lepton_ray.errors import CheckpointError
from lepton_ray.models.zoo import build_model
from lepton_ray.trial.sessions import CHECKPOINT_PATH_KEY

TRIAL_STATE_FILE = "trial_state.pt"
STUDENT_FILE = "student.pt"
ALLOCATION_FILE = "allocation.json"
"""A per-layer allocated student's table (layer, bits, sparsity, stored bytes, profiled shift), next to its student file."""
DIVERGED_FILE = "diverged.pt"


def trial_run_name(number: int) -> str:
    return f"trial-{number:04d}"


def newest_student_file(run_folder: Path) -> Path | None:
    """The shipped student of a finished trial run (its last checkpoint holds it); None if it did not finish."""
    return max(Path(run_folder).glob(f"*/{STUDENT_FILE}"), key=lambda path: path.parent.name, default=None)


def finished_trial_metrics(run_folder: Path) -> dict[str, Any] | None:
    """Final metrics of a trial run that already completed."""
    student_file = newest_student_file(run_folder)
    if student_file is None:
        return None
    payload = load_safe(student_file, "student checkpoint", mmap=True)  # the metrics only: a resume reads every finished trial's
    return {**payload.get("metrics", {}), CHECKPOINT_PATH_KEY: str(student_file.parent)}


def newest_readable_state(folders: list[Path], warn=print) -> dict[str, Any]:
    """Trial state from the newest kept checkpoint that loads; a truncated newest one falls back."""
    problems = []
    for folder in sorted(folders, key=lambda f: f.name, reverse=True):
        try:
            return load_safe(folder / TRIAL_STATE_FILE, "trial checkpoint")
        except CheckpointError as err:
            problems.append(str(err))
            warn(f"skipping unreadable checkpoint {folder.name}: {err}")
    raise CheckpointError("trial checkpoint: no kept checkpoint is readable (" + "; ".join(problems) + "); restart the trial from scratch")


def load_student(wf: WorkflowConfig, payload: dict[str, Any]) -> nn.Module:
    """Rebuild a finalized student (compressed structure included) from its saved payload."""

    model = build_model(ModelSpec(name=payload["model"], options=payload["options"]), model_input_of(payload), payload["num_classes"])
    model = Compression(wf.compression, wf.training.epochs).rebuild(model, payload["state_dict"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()
