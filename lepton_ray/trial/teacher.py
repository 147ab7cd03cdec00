"""The teacher stage: load each teacher from its checkpoint, or train it once and save it.

Runs in the driver before any trial; trials receive teachers as plain payloads through Ray's
object store, so workers on other nodes need no shared file system.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lepton_ray.checkpoints import load_safe, save_atomic
from lepton_ray.config import DataConfig, TeacherConfig, WorkflowConfig
from lepton_ray.data.datasets import DataSplits
from lepton_ray.errors import CheckpointError
from lepton_ray.distill.losses import DistillationObjective
from lepton_ray.models.zoo import build_model
from lepton_ray.data.batches import iterate_batches, train_indices
from lepton_ray.models.saved import load_teacher_module, model_payload
from lepton_ray.trial.batchnorm import reestimate_batchnorm
from lepton_ray.trial.epoch import Precision, evaluate, train_epoch


@dataclass(frozen=True)
class Teacher:
    payload: dict[str, Any]
    path: Path
    sha256: str

    @property
    def test_accuracy(self) -> float:
        return float(self.payload.get("test_accuracy", float("nan")))


def teacher_path(wf: WorkflowConfig, index: int, cfg: TeacherConfig) -> Path:
    return cfg.checkpoint or wf.run_dir / f"teacher{index}-{cfg.name}.pt"


def fingerprint(cfg: TeacherConfig, data: DataConfig, seed: int) -> str:
    """Identifies what a trained teacher was trained on, so a changed workflow retrains it."""
    described = {"teacher": cfg.model_dump(mode="json", exclude={"checkpoint"}), "data": data.model_dump(mode="json"), "seed": seed}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prepare_teachers(wf: WorkflowConfig, data: DataSplits, log=print) -> list[Teacher]:
    teachers = []
    for index, cfg in enumerate([wf.teacher, *wf.extra_teachers]):
        field = "teacher" if index == 0 else f"extra_teachers.{index - 1}"
        path = teacher_path(wf, index, cfg)
        wanted = fingerprint(cfg, wf.data, wf.training.seed)
        payload = load_safe(path, f"{field}.checkpoint") if path.is_file() else None
        if payload is not None and cfg.train is not None and payload.get("fingerprint") != wanted:
            payload = None
        if payload is None:
            if cfg.train is None:
                raise CheckpointError(f"{field}.checkpoint: file {str(path)!r} not found; pass a saved teacher or add a 'train' block")
            log(f"training teacher {cfg.name} ({cfg.train.epochs} epochs) -> {path}")
            payload = train_teacher(cfg, data, wf.training.seed, wanted, log)
            save_atomic(payload, path)
        check_teacher_fits(payload, data, field)
        teachers.append(Teacher(payload, path, file_sha256(path)))
    return teachers


def check_teacher_fits(payload: dict[str, Any], data: DataSplits, field: str) -> None:
    if payload.get("num_classes") != data.num_classes or list(payload.get("input_shape", [])) != list(data.input_shape):
        raise CheckpointError(
            f"{field}.checkpoint: teacher was saved for input {payload.get('input_shape')} with {payload.get('num_classes')} classes, "
            f"but the data has {list(data.input_shape)} and {data.num_classes}; use a teacher trained on this data"
        )
    try:
        load_teacher_module(payload)
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(f"{field}.checkpoint: weights do not fit model {payload.get('model')!r} ({str(err)[:160]})") from None


def train_teacher(cfg: TeacherConfig, data: DataSplits, seed: int, fingerprint_value: str, log=print) -> dict[str, Any]:
    """Plain supervised training in this process with the trial's own epoch function; keeps the best-val weights.
    One line per epoch: on real data a teacher trains for many minutes."""
    assert cfg.train is not None
    started = time.perf_counter()
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg, data.input_shape, data.num_classes, field="teacher").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.train.epochs)
    objective = DistillationObjective.hard_labels_only()
    precision = Precision("fp32", device)
    best_accuracy, best_state = -1.0, None
    for epoch in range(cfg.train.epochs):
        shard = train_indices(len(data.train), epoch, seed)
        train_epoch(model, [], objective, iterate_batches(data.train, shard, cfg.train.batch_size, device), optimizer, precision)
        scheduler.step()
        reestimate_batchnorm(model, iterate_batches(data.train, shard, cfg.train.batch_size, device))  # the best-val weights keep these statistics
        val_accuracy, _ = evaluate(model, data.val, 256, device)
        if val_accuracy > best_accuracy:
            best_accuracy, best_state = val_accuracy, {k: v.detach().clone() for k, v in model.state_dict().items()}
        log(f"  teacher epoch {epoch + 1}/{cfg.train.epochs}: val accuracy {val_accuracy:.4f} ({time.perf_counter() - started:.0f} s)")
    model.load_state_dict(best_state)
    test_accuracy, _ = evaluate(model, data.test, 256, device)
    return model_payload(model, cfg.name, cfg.options, data, test_accuracy=test_accuracy, val_accuracy=best_accuracy, fingerprint=fingerprint_value,
                         train_seconds=time.perf_counter() - started)
