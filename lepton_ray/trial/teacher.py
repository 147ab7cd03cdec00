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
from lepton_ray.errors import CheckpointError, ConfigError
from lepton_ray.distill.losses import DistillationObjective
from lepton_ray.models.zoo import build_model
from lepton_ray.data.batches import augment_view, iterate_batches, train_indices
from lepton_ray.models.saved import load_teacher_module, model_payload
from lepton_ray.trial.batchnorm import reestimate_batchnorm
from lepton_ray.trial.epoch import Precision, epoch_lr, evaluate, set_lr, train_epoch
from lepton_ray.console import echo


@dataclass(frozen=True)
class Teacher:
    payload: dict[str, Any]
    path: Path
    sha256: str

    @property
    def test_accuracy(self) -> float:
        return float(self.payload.get("test_accuracy", float("nan")))


TEACHER_KEYS = ("model", "options", "input_shape", "num_classes", "state_dict")
"""What a teacher file must hold (`models.saved.model_payload`); a bare state_dict lacks the architecture."""


@dataclass(frozen=True)
class TeacherSource:
    """Where one teacher comes from: `payload` read from `path`, or None when a teacher is to be trained
    and saved at `path`, which then holds no file, or is the product's own file in the run folder."""

    field: str
    path: Path
    payload: dict[str, Any] | None
    note: str = ""
    """Why the teacher is not the file `checkpoint` names, for the log."""


def locate_teacher(wf: WorkflowConfig, index: int, cfg: TeacherConfig) -> TeacherSource:
    """Never overwrites a file the user pointed to: a `train` block trains only where `checkpoint` names no
    file. A teacher lepton-ray trained for other settings (its `fingerprint` differs) is kept, and the one
    for these settings lives in the run folder; a file without a fingerprint is the user's and used as it is."""
    field = "teacher" if index == 0 else f"extra_teachers.{index - 1}"
    wanted = fingerprint(cfg, wf.data, wf.training.seed)
    if cfg.checkpoint is None:
        return _own_teacher(wf.run_dir / f"teacher{index}-{cfg.name}.pt", field, wanted)
    path = Path(cfg.checkpoint)
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{field}.checkpoint: {str(path)!r} is a folder, not a file; point it at a teacher file such as {path / (cfg.name + '.pt')}")
    if not path.exists():
        if cfg.train is None:
            raise CheckpointError(f"{field}.checkpoint: file {str(path)!r} not found; fix the path or add a 'train' block")
        return TeacherSource(field, path, None)
    payload = load_teacher_file(path, field, kept=cfg.train is not None)
    if cfg.train is None or payload.get("fingerprint") == wanted:
        return TeacherSource(field, path, payload)
    if "fingerprint" not in payload:
        return TeacherSource(field, path, payload, f"{field}.checkpoint: using your teacher {path} as it is; the 'train' block applies only where no file exists")
    own = _own_teacher(wf.run_dir / f"teacher{index}-{cfg.name}-{wanted}.pt", field, wanted)
    note = f"{field}.checkpoint: {path} was trained for other settings (teacher, data or training.seed); it is kept, and this workflow's teacher is {own.path}"
    return TeacherSource(field, own.path, own.payload, note)


def _own_teacher(path: Path, field: str, wanted: str) -> TeacherSource:
    """A teacher file in the run folder, the product's own: reused when trained for these settings, else trained again."""
    payload = load_teacher_file(path, field) if path.is_file() else None
    return TeacherSource(field, path, payload if payload is not None and payload.get("fingerprint") == wanted else None)


def load_teacher_file(path: Path, field: str, kept: bool = False) -> dict[str, Any]:
    """A teacher payload loaded weights-only; `kept`: the file stays as it is even though a 'train' block is present."""
    never_overwritten = f"; lepton-ray never overwrites it: delete it or point {field}.checkpoint at a new file to train a teacher there"
    try:
        payload = load_safe(path, f"{field}.checkpoint")
    except CheckpointError as err:
        raise CheckpointError(f"{err}{never_overwritten if kept else ''}") from None
    missing = [key for key in TEACHER_KEYS if key not in payload]
    if missing:
        fix = never_overwritten if kept else "; pass a teacher saved by lepton-ray or add a 'train' block with a new checkpoint path"
        raise CheckpointError(f"{field}.checkpoint: {path} is not a lepton-ray teacher file (it lacks {', '.join(map(repr, missing))}){fix}")
    return payload


def fingerprint(cfg: TeacherConfig, data: DataConfig, seed: int) -> str:
    """Identifies what a trained teacher was trained on, so a changed workflow retrains it."""
    teacher = cfg.model_dump(mode="json", exclude={"checkpoint"})
    if teacher.get("train") and teacher["train"].get("augment") is None:
        del teacher["train"]["augment"]  # added later: teachers trained before it keep their fingerprint
    described = {"teacher": teacher, "data": data.model_dump(mode="json"), "seed": seed}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prepare_teachers(wf: WorkflowConfig, data: DataSplits, log=echo) -> list[Teacher]:
    teachers = []
    for index, cfg in enumerate([wf.teacher, *wf.extra_teachers]):
        source = locate_teacher(wf, index, cfg)
        if source.note:
            log(source.note)
        payload = source.payload
        if payload is None:
            assert cfg.train is not None  # locate_teacher refuses a missing file without a 'train' block
            log(f"training teacher {cfg.name} ({cfg.train.epochs} epochs) -> {source.path}")
            payload = train_teacher(cfg, data, wf.training.seed, fingerprint(cfg, wf.data, wf.training.seed), log)
            save_atomic(payload, source.path)
        check_teacher_fits(payload, data, source.field)
        teachers.append(Teacher(payload, source.path, file_sha256(source.path)))
    return teachers


def check_teacher_fits(payload: dict[str, Any], data: DataSplits, field: str) -> None:
    shape = payload.get("input_shape")
    if payload.get("num_classes") != data.num_classes or not isinstance(shape, (list, tuple)) or list(shape) != list(data.input_shape):
        raise CheckpointError(
            f"{field}.checkpoint: teacher was saved for input {payload.get('input_shape')} with {payload.get('num_classes')} classes, "
            f"but the data has {list(data.input_shape)} and {data.num_classes}; use a teacher trained on this data"
        )
    try:
        load_teacher_module(payload)
    except (KeyError, RuntimeError, TypeError, ValueError, ConfigError) as err:
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{field}.checkpoint: weights do not fit model {payload.get('model')!r} ({reason}); use a teacher saved by lepton-ray for it") from None


def train_teacher(cfg: TeacherConfig, data: DataSplits, seed: int, fingerprint_value: str, log=echo) -> dict[str, Any]:
    """Plain supervised training in this process with the trial's own epoch function; keeps the best-val weights.
    One line per epoch: on real data a teacher trains for many minutes."""
    assert cfg.train is not None
    started = time.perf_counter()
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg, data.input_shape, data.num_classes, field="teacher").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    objective = DistillationObjective.hard_labels_only()
    precision = Precision("fp32", device)
    best_accuracy, best_state = -1.0, None
    for epoch in range(cfg.train.epochs):
        set_lr(optimizer, epoch_lr(cfg.train.lr, "cosine", epoch, cfg.train.epochs))
        shard = train_indices(len(data.train), epoch, seed)
        view = augment_view(cfg.train.augment, len(data.train), epoch, seed)
        train_epoch(model, [], objective, iterate_batches(data.train, shard, cfg.train.batch_size, device, view), optimizer, precision)
        reestimate_batchnorm(model, iterate_batches(data.train, shard, cfg.train.batch_size, device, view))  # the best-val weights keep these statistics
        val_accuracy, _ = evaluate(model, data.val, 256, device)
        if val_accuracy > best_accuracy:
            best_accuracy, best_state = val_accuracy, {k: v.detach().clone() for k, v in model.state_dict().items()}
        log(f"  teacher epoch {epoch + 1}/{cfg.train.epochs}: val accuracy {val_accuracy:.4f} ({time.perf_counter() - started:.0f} s)")
    model.load_state_dict(best_state)
    test_accuracy, _ = evaluate(model, data.test, 256, device)
    return model_payload(model, cfg.name, cfg.options, data, test_accuracy=test_accuracy, val_accuracy=best_accuracy, fingerprint=fingerprint_value,
                         train_seconds=time.perf_counter() - started)
