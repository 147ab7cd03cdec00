"""Driver side of one distillation trial: what trials share (object store), the `TorchTrainer` for a trial."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from lepton_ray import metrics
from lepton_ray.config import WorkflowConfig
from lepton_ray.distill.losses import DistillationObjective
from lepton_ray.distill.teacher_cache import cache_key, load_or_build_cache
from lepton_ray.models.saved import load_teacher_module
from lepton_ray.trial.loop import train_loop_per_worker
from lepton_ray.trial.per_layer import allocates, sweep_profile
from lepton_ray.trial.teacher import Teacher

if TYPE_CHECKING:
    from lepton_ray.data.datasets import DataSplits
    from lepton_ray.distill.teacher_cache import TeacherCache


class TrialDivergedError(RuntimeError):
    """The trial's loss became NaN/inf; it is failed, never selected or exported."""


@dataclass(frozen=True)
class TrialInputs:
    """What every trial of a sweep reads, prepared once by the driver: object-store refs (or, for a
    teacher cache too big for the object store, a file path on shared storage)."""

    teachers: list[Any]
    data: Any = None
    """Ref of the in-memory `DataSplits`; None makes each worker build its data itself."""
    teacher_cache: Any = None
    sensitivity: dict[str, Any] | None = None
    """The sweep's per-layer sensitivity profile (`trial/per_layer.py`) where a trial may allocate; small plain data."""

    def loop_config(self, wf: WorkflowConfig) -> dict[str, Any]:
        return {"workflow": wf.to_dict(), "teachers": self.teachers, "data": self.data, "teacher_cache": self.teacher_cache, "sensitivity": self.sensitivity}


TRAIN_POLL_INTERVAL_S = "0.1"
"""Ray Train V2's controller polls its workers every `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S` (default 2 s),
and a worker's `report()` waits for that poll, so with a report per epoch most of a short epoch was
waiting. Ray propagates the variable to the controller."""


def build_trainer(wf: WorkflowConfig, inputs: TrialInputs, storage_path: Path, name: str, callbacks: Sequence[Any] = ()):
    """A `TorchTrainer` running `train_loop_per_worker` as DDP (gloo on CPU, nccl on GPU)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_INTERVAL_S)

    res = wf.resources
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**inputs.loop_config(wf), "run_folder": str(Path(storage_path).resolve() / name)},
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


def put_trial_inputs(
    wf: WorkflowConfig, teachers: list[Teacher], data: "DataSplits", storage: Path, log: Callable[[str], None], searched: Sequence[str] = (),
) -> TrialInputs:
    """Put teachers, in-memory data and the teacher cache where every trial's workers read them; the sensitivity
    profile too where the workflow or the searched knobs (`searched`) allocate per layer."""
    import ray
    from torch.utils.data import TensorDataset

    in_memory = all(isinstance(split, TensorDataset) for split in (data.train, data.val, data.test))
    return TrialInputs(
        teachers=[ray.put(teacher.payload) for teacher in teachers],
        data=ray.put(data) if in_memory else None,
        teacher_cache=shared_teacher_cache(wf, teachers, data, storage, log) if teachers else None,
        sensitivity=sweep_profile(wf, data, storage, log) if allocates(wf, list(searched)) else None,
    )


def sweep_teacher_cache(wf: WorkflowConfig, teachers: list[Teacher], data: "DataSplits", storage: Path) -> tuple["TeacherCache", Path]:
    """Teacher outputs for every (view, training sample), computed once (or read back on --resume), and its file."""

    layers = DistillationObjective(wf.distillation).teacher_layers
    top_k = wf.sweep.teacher_cache_top_k
    key = cache_key([t.sha256 for t in teachers], wf.data.model_dump(mode="json"), layers, top_k)
    path = Path(storage) / f"teacher_cache-{key}.pt"
    return load_or_build_cache(path, [load_teacher_module(t.payload) for t in teachers], data.train, layers, wf.data, key, top_k), path


def shared_teacher_cache(wf: WorkflowConfig, teachers: list[Teacher], data: "DataSplits", storage: Path, log: Callable[[str], None]) -> Any:
    """The sweep's teacher cache where trials read it: an object-store ref, or its file path when large; None when off."""
    if not wf.sweep.teacher_cache:
        return None
    import ray

    cache, path = sweep_teacher_cache(wf, teachers, data, storage)
    in_object_store = cache.size_bytes <= wf.sweep.teacher_cache_object_store_mb * 1e6
    where = "the object store" if in_object_store else str(path)
    kept = f"top-{cache.top_k} logits" if cache.top_k else "all logits"
    log(f"teacher cache {cache.key}: {len(teachers)} teacher(s), {kept}, {len(cache.features)} feature layer(s), {cache.size_bytes / 1e6:.1f} MB in {where}, shared by all trials")
    return ray.put(cache) if in_object_store else str(path.resolve())


def raise_if_diverged(final_metrics: dict[str, Any]) -> None:
    if final_metrics.get(metrics.DIVERGED):
        raise TrialDivergedError(
            f"training diverged at epoch {final_metrics.get(metrics.EPOCH)} (train_loss={final_metrics.get(metrics.TRAIN_LOSS):.4g}, "
            "NaN/inf or above training.divergence_loss); lower training.lr or check the data"
        )
