"""Teacher outputs computed once per sweep and shared by every trial.

Every trial of a sweep runs the same frozen teacher over the same training images; with a
teacher ~100x the student's MACs that forward pass is most of a trial's compute. The cache holds
each teacher's logits (and the primary teacher's features the losses name) for every
(augmentation view, training sample), keyed by a hash of teacher weights + data config (which
includes the augmentation) + layers.

It is exact because augmentation is replayed (`lepton_ray/data/batches.py`): sample i in view v is
the same tensor in every trial and epoch, so its cached output equals the live one (tested to
float tolerance). Small caches travel through Ray's object store; caches above
`sweep.teacher_cache_object_store_mb` stay a file on the sweep's storage that workers read.
With many classes, `sweep.teacher_cache_top_k` keeps only each sample's k largest logits
(`TopKLogits`): for ImageNet's 1,000 classes and k=10 about 60x smaller.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from lepton_ray.data.batches import Batch, augment_view, iterate_batches, num_views
from lepton_ray.checkpoints import load_safe, save_atomic
from lepton_ray.config import DataConfig
from lepton_ray.models.features import capture_features


@dataclass
class TopKLogits:
    """One teacher's logits as each sample's k largest values, their classes, and the log-sum-exp of the rest.

    Indexed like the dense (views, samples, classes) table it replaces. Rebuilt rows put every other
    class at `rest_lse - log(C - k)`, so at temperature 1 the softmax gives the exact top-k
    probabilities and the exact total mass of the rest (spread evenly), and the argmax is unchanged;
    at other temperatures the rest's mass is approximate. Losses on raw logits (`logit_mse`) change,
    so trials using them run the teachers live.
    """

    values: torch.Tensor
    """(views, samples, k) float32, largest first."""
    classes: torch.Tensor
    """(views, samples, k) int16 (int32 above 32,767 classes)."""
    rest_lse: torch.Tensor
    """(views, samples) log-sum-exp of the other classes' logits."""
    num_classes: int

    @classmethod
    def compress(cls, logits: torch.Tensor, k: int) -> "TopKLogits":
        num_classes = logits.shape[-1]
        values, classes = logits.topk(k, dim=-1)
        rest_lse = torch.logsumexp(logits.scatter(-1, classes, float("-inf")), dim=-1)
        index_type = torch.int16 if num_classes <= torch.iinfo(torch.int16).max else torch.int32
        return cls(values.contiguous(), classes.to(index_type), rest_lse, num_classes)

    def __getitem__(self, key: tuple[int, torch.Tensor]) -> torch.Tensor:
        view, indices = key
        values = self.values[view, indices]
        fill = self.rest_lse[view, indices] - math.log(self.num_classes - values.shape[-1])
        dense = fill.unsqueeze(-1).expand(*values.shape[:-1], self.num_classes).clone()
        return dense.scatter_(-1, self.classes[view, indices].long(), values)

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self, device: torch.device) -> "TopKLogits":
        return TopKLogits(self.values.to(device), self.classes.to(device), self.rest_lse.to(device), self.num_classes)

    @property
    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.classes, self.rest_lse))

    def as_payload(self) -> dict[str, Any]:
        """Tensors and an int only, so the cache file loads with `weights_only=True`."""
        return {"values": self.values, "classes": self.classes, "rest_lse": self.rest_lse, "num_classes": self.num_classes}


LogitsTable = torch.Tensor | TopKLogits


def _table_bytes(table: LogitsTable) -> int:
    return table.size_bytes if isinstance(table, TopKLogits) else table.numel() * table.element_size()


def _table_from_payload(stored: Any) -> LogitsTable:
    return TopKLogits(**stored) if isinstance(stored, dict) else stored


@dataclass
class TeacherCache:
    key: str
    data_config: dict[str, Any]
    """The `data` section the outputs were computed for; a trial with other data uses live teachers."""
    logits: list[LogitsTable]
    """One (views, num_train_samples, num_classes) table per teacher: a tensor, or `TopKLogits`."""
    features: dict[str, torch.Tensor]
    """Primary teacher's outputs of named layers, (views, num_train_samples, ...)."""

    def covers(self, num_teachers: int, layers: tuple[str, ...], data_config: dict[str, Any], needs_every_logit: bool = False) -> bool:
        exact_enough = not (needs_every_logit and self.top_k)
        return len(self.logits) == num_teachers and all(name in self.features for name in layers) and data_config == self.data_config and exact_enough

    @property
    def top_k(self) -> int | None:
        """k when the logits are kept as top-k, else None."""
        return next((table.values.shape[-1] for table in self.logits if isinstance(table, TopKLogits)), None)

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
        return sum(_table_bytes(t) for t in [*self.logits, *self.features.values()])

    def save(self, path: Path) -> None:
        logits = [t.as_payload() if isinstance(t, TopKLogits) else t for t in self.logits]
        save_atomic({"key": self.key, "data_config": self.data_config, "logits": logits, "features": self.features}, path)

    @classmethod
    def load(cls, path: Path) -> "TeacherCache":
        payload = load_safe(Path(path), "teacher cache")
        return cls(payload["key"], dict(payload["data_config"]), [_table_from_payload(t) for t in payload["logits"]], dict(payload["features"]))


def cache_key(teacher_hashes: list[str], data_config: dict, layers: tuple[str, ...], top_k: int | None = None) -> str:
    described = {"teachers": teacher_hashes, "data": data_config, "layers": list(layers), **({"top_k": top_k} if top_k else {})}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def build_teacher_cache(
    teachers: list[nn.Module], dataset: Dataset, layers: tuple[str, ...], data_cfg: DataConfig, key: str, batch_size: int = 256,
    top_k: int | None = None,
) -> TeacherCache:
    """One no-grad pass of every teacher over every augmentation view of the training split, on CPU;
    logits kept as top-k when `top_k` is below the number of classes."""
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

    def kept(table: torch.Tensor) -> LogitsTable:
        return TopKLogits.compress(table, top_k) if top_k and top_k < table.shape[-1] else table

    tables = [kept(by_view(c)) for c in logits]
    return TeacherCache(key, data_cfg.model_dump(mode="json"), tables, {name: by_view(c) for name, c in features.items()})


def load_or_build_cache(
    path: Path, teachers: list[nn.Module], dataset: Dataset, layers: tuple[str, ...], data_cfg: DataConfig, key: str, top_k: int | None = None,
) -> TeacherCache:
    """Reuse the cache file on the sweep's storage when its key matches (e.g. after --resume)."""
    path = Path(path)
    if path.is_file():
        cached = TeacherCache.load(path)
        if cached.key == key:
            return cached
    cache = build_teacher_cache(teachers, dataset, layers, data_cfg, key, top_k=top_k)
    cache.save(path)
    return cache
