"""Teacher outputs computed once per sweep and shared by every trial through Ray's object store.

Every trial of a sweep runs the same frozen teacher over the same training images; with a
teacher ~100x the student's MACs that forward pass is most of a trial's compute. The cache holds
each teacher's logits (and the primary teacher's features the losses name) for every training
sample, in dataset order, keyed by a hash of teacher weights + data config + layers.

It is exact because the data path has no random augmentation: a training sample is the same
tensor in every epoch, so its cached output equals the live one (tested to float tolerance).
A workflow that adds augmentation must key the cache by (sample, augmentation seed) and replay
those seeds; until then the sweep only builds a cache for un-augmented data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from lepton_ray.features import capture_features


@dataclass
class TeacherCache:
    key: str
    logits: list[torch.Tensor]
    """One (num_train_samples, num_classes) tensor per teacher."""
    features: dict[str, torch.Tensor]
    """Primary teacher's outputs of named layers, (num_train_samples, ...)."""

    def covers(self, num_teachers: int, layers: tuple[str, ...]) -> bool:
        return len(self.logits) == num_teachers and all(name in self.features for name in layers)

    def lookup(self, indices: torch.Tensor, layers: tuple[str, ...], device: torch.device) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        indices = indices.to(self.logits[0].device)
        logits = [table[indices].to(device, non_blocking=True) for table in self.logits]
        return logits, {name: self.features[name][indices].to(device, non_blocking=True) for name in layers}

    def to(self, device: torch.device) -> "TeacherCache":
        """Move the tables once (e.g. onto the GPU) so each batch is a pure index."""
        return TeacherCache(self.key, [t.to(device) for t in self.logits], {k: v.to(device) for k, v in self.features.items()})

    def to_payload(self) -> dict:
        return {"key": self.key, "logits": self.logits, "features": self.features}

    @classmethod
    def from_payload(cls, payload: dict) -> "TeacherCache":
        return cls(payload["key"], list(payload["logits"]), dict(payload["features"]))

    @property
    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.logits, *self.features.values()])


def cache_key(teacher_hashes: list[str], data_config: dict, layers: tuple[str, ...]) -> str:
    described = {"teachers": teacher_hashes, "data": data_config, "layers": list(layers)}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def build_teacher_cache(teachers: list[nn.Module], dataset: Dataset, layers: tuple[str, ...], key: str, batch_size: int = 256) -> TeacherCache:
    """One no-grad pass of every teacher over the training split, on CPU, in dataset order."""
    from lepton_ray.trial import iterate_batches

    logits: list[list[torch.Tensor]] = [[] for _ in teachers]
    features: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with torch.no_grad():
        for images, _, _ in iterate_batches(dataset, list(range(len(dataset))), batch_size, torch.device("cpu")):
            with capture_features(teachers[0], layers, "teacher layer") as captured:
                for chunks, teacher in zip(logits, teachers):
                    chunks.append(teacher(images).float())
            for name in layers:
                features[name].append(captured[name].float())
    return TeacherCache(key, [torch.cat(chunks) for chunks in logits], {name: torch.cat(parts) for name, parts in features.items()})


def load_or_build_cache(path, teachers: list[nn.Module], dataset: Dataset, layers: tuple[str, ...], key: str) -> TeacherCache:
    """Reuse the cache file on the sweep's storage when its key matches (e.g. after --resume)."""
    from pathlib import Path

    from lepton_ray.checkpoints import load_safe, save_atomic

    path = Path(path)
    if path.is_file():
        payload = load_safe(path, "teacher cache")
        if payload.get("key") == key:
            return TeacherCache.from_payload(payload)
    cache = build_teacher_cache(teachers, dataset, layers, key)
    save_atomic(cache.to_payload(), path)
    return cache
