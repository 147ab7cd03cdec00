"""Driver side of one distillation trial: build the `TorchTrainer`, run it, read the student back."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Sequence

from lepton_ray import metrics
from lepton_ray.checkpoints import load_safe
from lepton_ray.config import WorkflowConfig
from lepton_ray.teacher import Teacher
from lepton_ray.trial import DIVERGED, STUDENT_FILE, train_loop_per_worker


class TrialDivergedError(RuntimeError):
    """The trial's loss became NaN/inf; it is failed, never selected or exported."""


def build_trainer(wf: WorkflowConfig, teacher_refs: list[Any], storage_path: Path, name: str, callbacks: Sequence[Any] = (), teacher_cache_ref: Any = None):
    """A `TorchTrainer` running `train_loop_per_worker` as DDP (gloo on CPU, nccl on GPU)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    res = wf.resources
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"workflow": wf.to_dict(), "teachers": teacher_refs, "teacher_cache": teacher_cache_ref},
        torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(storage_path).resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=res.max_failures),
            callbacks=list(callbacks),
        ),
    )


def put_teachers(teachers: list[Teacher]) -> list[Any]:
    import ray

    return [ray.put(teacher.payload) for teacher in teachers]


def student_from_result(result) -> dict[str, Any]:
    """The finalized student payload saved with the trial's last checkpoint."""
    if result.checkpoint is None:
        raise RuntimeError("the trial ended without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        return load_safe(Path(folder) / STUDENT_FILE, "student checkpoint")


def raise_if_diverged(final_metrics: dict[str, Any]) -> None:
    if final_metrics.get(DIVERGED):
        raise TrialDivergedError(
            f"training diverged at epoch {final_metrics.get(metrics.EPOCH)} (train_loss={final_metrics.get(metrics.TRAIN_LOSS):.4g}, "
            "NaN/inf or above training.divergence_loss); lower training.lr or check the data"
        )


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
