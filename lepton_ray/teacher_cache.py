"""Teacher outputs computed once per sweep and shared by every trial.

Every trial of a sweep runs the same frozen teacher over the same training images; with a
teacher ~100x the student's MACs that forward pass is most of a trial's compute. The cache holds
each teacher's logits (and the primary teacher's features the losses name) for every
(augmentation view, training sample), keyed by a hash of teacher weights + data config (which
includes the augmentation) + layers.

It is exact because augmentation is replayed (`lepton_ray/batches.py`): sample i in view v is
the same tensor in every trial and epoch, so its cached output equals the live one (tested to
float tolerance). Small caches travel through Ray's object store; caches above
`sweep.teacher_cache_object_store_mb` stay a file on the sweep's storage that workers read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from lepton_ray.batches import Batch, augment_view, iterate_batches, num_views
from lepton_ray.checkpoints import load_safe, save_atomic
from lepton_ray.config import DataConfig
from lepton_ray.features import capture_features


@dataclass
class TeacherCache:
    key: str
    data_config: dict[str, Any]
    """The `data` section the outputs were computed for; a trial with other data uses live teachers."""
    logits: list[torch.Tensor]
    """One (views, num_train_samples, num_classes) tensor per teacher."""
    features: dict[str, torch.Tensor]
    """Primary teacher's outputs of named layers, (views, num_train_samples, ...)."""

    def covers(self, num_teachers: int, layers: tuple[str, ...], data_config: dict[str, Any]) -> bool:
        return len(self.logits) == num_teachers and all(name in self.features for name in layers) and data_config == self.data_config

    def lookup(self, batch: Batch, layers: tuple[str, ...]) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Teacher logits and features of a batch, by (view, sample index): no forward pass."""
        device = batch.images.device
        indices = batch.indices.to(self.logits[0].device)
        logits = [table[batch.view, indices].to(device, non_blocking=True) for table in self.logits]
        return logits, {name: self.features[name][batch.view, indices].to(device, non_blocking=True) for name in layers}

    def to(self, device: torch.device) -> "TeacherCache":
        """Move the tables once (e.g. onto the GPU) so each batch is a pure index."""
        return TeacherCache(self.key, self.data_config, [t.to(device) for t in self.logits], {k: v.to(device) for k, v in self.features.items()})

    @property
    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.logits, *self.features.values()])

    def save(self, path: Path) -> None:
        save_atomic({"key": self.key, "data_config": self.data_config, "logits": self.logits, "features": self.features}, path)

    @classmethod
    def load(cls, path: Path) -> "TeacherCache":
        payload = load_safe(Path(path), "teacher cache")
        return cls(payload["key"], dict(payload["data_config"]), list(payload["logits"]), dict(payload["features"]))


def cache_key(teacher_hashes: list[str], data_config: dict, layers: tuple[str, ...]) -> str:
    described = {"teachers": teacher_hashes, "data": data_config, "layers": list(layers)}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def build_teacher_cache(
    teachers: list[nn.Module], dataset: Dataset, layers: tuple[str, ...], data_cfg: DataConfig, key: str, batch_size: int = 256
) -> TeacherCache:
    """One no-grad pass of every teacher over every augmentation view of the training split, on CPU."""
    views = num_views(data_cfg.augment)
    logits: list[list[torch.Tensor]] = [[] for _ in teachers]
    features: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    all_samples = list(range(len(dataset)))
    with torch.no_grad():
        for view_number in range(views):
            view = augment_view(data_cfg.augment, len(dataset), view_number, data_cfg.seed)
            for batch in iterate_batches(dataset, all_samples, batch_size, torch.device("cpu"), view):
                with capture_features(teachers[0], layers, "teacher layer") as captured:
                    for chunks, teacher in zip(logits, teachers):
                        chunks.append(teacher(batch.images).float())
                for name in layers:
                    features[name].append(captured[name].float())

    def by_view(chunks: list[torch.Tensor]) -> torch.Tensor:
        table = torch.cat(chunks)
        return table.reshape(views, len(dataset), *table.shape[1:])

    return TeacherCache(key, data_cfg.model_dump(mode="json"), [by_view(c) for c in logits], {name: by_view(c) for name, c in features.items()})


def load_or_build_cache(path: Path, teachers: list[nn.Module], dataset: Dataset, layers: tuple[str, ...], data_cfg: DataConfig, key: str) -> TeacherCache:
    """Reuse the cache file on the sweep's storage when its key matches (e.g. after --resume)."""
    path = Path(path)
    if path.is_file():
        cached = TeacherCache.load(path)
        if cached.key == key:
            return cached
    cache = build_teacher_cache(teachers, dataset, layers, data_cfg, key)
    cache.save(path)
    return cache
