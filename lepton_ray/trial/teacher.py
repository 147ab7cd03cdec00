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
from lepton_ray.config import DataConfig, ModelSpec, TeacherConfig, TrainingConfig, WorkflowConfig
from lepton_ray.data.datasets import DataSplits
from lepton_ray.data.inputs import model_input_of
from lepton_ray.errors import CheckpointError, ConfigError
from lepton_ray.distill.losses import DistillationObjective
from lepton_ray.models.zoo import build_model
from lepton_ray.data.batches import augment_view, iterate_batches, train_indices
from lepton_ray.models.saved import load_teacher_module, model_payload
from lepton_ray.trial.batchnorm import reestimate_batchnorm
from lepton_ray.trial.epoch import Precision, build_optimizer, epoch_lr, evaluate, memory_format, set_lr, train_epoch
from lepton_ray.console import echo


@dataclass(frozen=True)
class Teacher:
    payload: dict[str, Any]
    path: Path
    sha256: str

    @property
    def test_accuracy(self) -> float:
        return float(self.payload.get("test_accuracy", float("nan")))

    @property
    def val_accuracy(self) -> float:
        return float(self.payload.get("val_accuracy", float("nan")))


TEACHER_KEYS = ("model", "options", "input_shape", "num_classes", "state_dict")
"""What a lepton-ray teacher file holds (`models.saved.model_payload`). A plain state_dict of your own
(`torch.save(model.state_dict(), path)`) is a teacher too: `teacher.name`/`options` give its architecture
and the data its input shape and classes."""

STATE_DICT_KEYS = ("state_dict", "model_state_dict")
"""Where common training scripts nest the weights in a checkpoint dict."""


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
    payload = load_teacher_file(path, field, kept=cfg.train is not None, spec=cfg)
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


def load_teacher_file(path: Path, field: str, kept: bool = False, spec: TeacherConfig | None = None) -> dict[str, Any]:
    """A teacher payload loaded weights-only: a lepton-ray teacher file, or (given the workflow's `spec`)
    a plain state_dict, whose input shape and classes are those of the data (`fit_to_data`).
    `kept`: the file stays as it is even though a 'train' block is present."""
    never_overwritten = f"; lepton-ray never overwrites it: delete it or point {field}.checkpoint at a new file to train a teacher there"
    try:
        payload = load_safe(path, f"{field}.checkpoint")
    except CheckpointError as err:
        raise CheckpointError(f"{err}{never_overwritten if kept else ''}") from None
    weights = plain_state_dict(payload)
    if weights is not None and spec is not None:
        return {"model": spec.name, "options": dict(spec.options), "input_shape": None, "num_classes": None, "state_dict": weights}
    missing = [key for key in TEACHER_KEYS if key not in payload]
    if missing:
        fix = never_overwritten if kept else f"; save your model's state_dict (torch.save(model.state_dict(), path)) and set {field}.name/options to its architecture, or add a 'train' block with a new checkpoint path"
        raise CheckpointError(f"{field}.checkpoint: {path} is neither a lepton-ray teacher file nor a state_dict (it lacks {', '.join(map(repr, missing))}){fix}")
    return payload


def plain_state_dict(payload: Any) -> dict[str, Any] | None:
    """The weights of a user's checkpoint: a name -> tensor dict, possibly under `state_dict` /
    `model_state_dict`, with DDP's `module.` prefix dropped; None when it is not one (e.g. our own files)."""
    if isinstance(payload, dict) and "model" not in payload:
        nested = [payload[key] for key in STATE_DICT_KEYS if isinstance(payload.get(key), dict)]
        payload = nested[0] if nested else payload
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        return None
    if all(key.startswith("module.") for key in payload):
        return {key[len("module."):]: value for key, value in payload.items()}
    return payload


def fit_to_data(payload: dict[str, Any], data: DataSplits) -> dict[str, Any]:
    """A plain state_dict's payload gets the data's input shape and classes; lepton-ray files keep theirs."""
    if payload.get("input_shape") is None:
        return {**payload, "input_shape": list(data.input_shape), "model_input": data.model_input.as_dict(), "num_classes": data.num_classes}
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
            payload = train_teacher(cfg, data, wf.training.seed, fingerprint(cfg, wf.data, wf.training.seed), log, teacher_kernels(wf.training))
            save_atomic(payload, source.path)
        payload = fit_to_data(payload, data)
        check_teacher_fits(payload, data, source.field)
        if "val_accuracy" not in payload or "test_accuracy" not in payload:
            payload = {**payload, **measured_on(payload, data, source, log)}
        teachers.append(Teacher(payload, source.path, file_sha256(source.path)))
    return teachers


def measured_on(payload: dict[str, Any], data: DataSplits, source: TeacherSource, log=echo) -> dict[str, float]:
    """Validation and test accuracy of a teacher that did not come with them (your own file), with a
    warning near chance: the usual cause is a class order or input normalisation other than the data's."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher = load_teacher_module(payload).to(device)
    val_accuracy, _ = evaluate(teacher, data.val, 256, device)
    test_accuracy, _ = evaluate(teacher, data.test, 256, device)
    log(f"{source.field}: {source.path} scores {val_accuracy:.4f} on the validation split, {test_accuracy:.4f} on test")
    if val_accuracy < 1.5 / data.num_classes:
        log(
            f"warning: {source.field} is near chance ({val_accuracy:.3f}, chance {1 / data.num_classes:.3f}): its class order or input "
            "normalisation likely differs from this data's (images normalised by the training split's per-channel mean and std)"
        )
    return {"val_accuracy": val_accuracy, "test_accuracy": test_accuracy}


def check_teacher_fits(payload: dict[str, Any], data: DataSplits, field: str) -> None:
    """The teacher takes this data's input and gives its classes, and its weights fit its architecture,
    checked layer by layer so that a mismatch names the layer."""
    payload = fit_to_data(payload, data)
    shape = payload.get("input_shape")
    saved_input = payload.get("model_input", {"kind": "float", "shape": shape})
    if payload.get("num_classes") != data.num_classes or not isinstance(shape, (list, tuple)) or saved_input != data.model_input.as_dict():
        raise CheckpointError(
            f"{field}.checkpoint: teacher was saved for input {saved_input} with {payload.get('num_classes')} classes, "
            f"but the data has {data.model_input.as_dict()} and {data.num_classes}; use a teacher trained on this data"
        )
    names, expected = payload.get("class_names"), list(data.contract.class_names)
    if names is not None and list(names) != expected:
        raise CheckpointError(
            f"{field}.checkpoint: teacher was trained with classes {list(names)} (output order) but the data's are {expected}; "
            "use a teacher trained on this data, or name the class folders so that they sort in the teacher's order"
        )
    architecture = f"model {payload.get('model')!r} with options {payload.get('options') or {}}"
    try:
        model = build_model(ModelSpec(name=payload["model"], options=payload["options"]), model_input_of(payload), data.num_classes, field=field)
    except ConfigError as err:
        raise CheckpointError(f"{field}.checkpoint: the file names {architecture}, which does not build ({err})") from None
    mismatches = weight_mismatches(model.state_dict(), payload["state_dict"])
    saved_output, model_output = output_layer(payload["state_dict"]), output_layer(model.state_dict())
    saved_classes = saved_output[1] if saved_output and model_output and saved_output[0] == model_output[0] else None
    if mismatches and saved_classes not in (None, data.num_classes) and model_output[1] == data.num_classes:
        raise CheckpointError(
            f"{field}.checkpoint: the teacher's last layer gives {saved_classes} classes, but the data has {data.num_classes}; "
            "use a teacher trained on this data's classes"
        )
    if mismatches:
        more = f"; {len(mismatches) - 2} more" if len(mismatches) > 2 else ""
        raise CheckpointError(
            f"{field}.checkpoint: the weights do not fit {architecture}: {'; '.join(mismatches[:2])}{more}; "
            f"set {field}.name/options to the architecture the file was saved from"
        )
    try:
        load_teacher_module(payload)
    except (KeyError, RuntimeError, TypeError, ValueError, ConfigError) as err:
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{field}.checkpoint: weights do not fit {architecture} ({reason}); use a teacher saved for it") from None


def output_layer(state_dict: dict[str, Any]) -> tuple[str, int] | None:
    """The last weight matrix or kernel of a state dict and its rows: a classifier's output layer and its classes."""
    weights = [(key, value) for key, value in state_dict.items() if key.endswith("weight") and getattr(value, "ndim", 0) >= 2]
    return (weights[-1][0], int(weights[-1][1].shape[0])) if weights else None


def weight_mismatches(expected: dict[str, torch.Tensor], saved: dict[str, Any]) -> list[str]:
    """One phrase per layer tensor that is missing, unexpected or of another shape in `saved`."""
    shapes = [
        f"{key} is {list(saved[key].shape)} in the file, {list(tensor.shape)} in the model"
        for key, tensor in expected.items() if key in saved and hasattr(saved[key], "shape") and tuple(saved[key].shape) != tuple(tensor.shape)
    ]
    missing = [f"{key} is missing from the file" for key in expected if key not in saved]
    unexpected = [f"{key} is in the file, not in the model" for key in saved if key not in expected]
    return shapes + missing + unexpected


def teacher_kernels(training: TrainingConfig) -> TrainingConfig:
    """The workflow's training kernels (precision, fused optimizer, memory format) for its teacher: a user who pins them
    pins the whole run. `channels_last: true` was checked against the student only, so the teacher gets it where it
    runs on it (unset) rather than forced."""
    return training.model_copy(update={"channels_last": None}) if training.channels_last else training


def train_teacher(cfg: TeacherConfig, data: DataSplits, seed: int, fingerprint_value: str, log=echo, kernels: TrainingConfig = TrainingConfig()) -> dict[str, Any]:
    """Plain supervised training in this process with the trial's own epoch function; keeps the best-val weights.
    One line per epoch: on real data a teacher trains for many minutes. `kernels`: the workflow's (`teacher_kernels`),
    by default channels_last weights where the model runs them, fused Adam; `benchmarks/end_to_end.py` times the ones before."""
    assert cfg.train is not None
    started = time.perf_counter()
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg, data.model_input, data.num_classes, field="teacher").to(device)
    example = next(iterate_batches(data.train, [0, 1], 2, device)).images
    model = model.to(memory_format=memory_format(kernels, model, example))
    optimizer = build_optimizer(kernels.model_copy(update={"optimizer": "adam", "lr": cfg.train.lr, "weight_decay": 0.0}), list(model.parameters()))
    objective = DistillationObjective.hard_labels_only()
    precision = Precision(kernels.precision, device)
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
    model = model.to(memory_format=torch.contiguous_format)  # the file holds plain tensors, whatever the kernels were
    test_accuracy, _ = evaluate(model, data.test, 256, device)
    return model_payload(model, cfg.name, cfg.options, data, test_accuracy=test_accuracy, val_accuracy=best_accuracy, fingerprint=fingerprint_value,
                         train_seconds=time.perf_counter() - started)
