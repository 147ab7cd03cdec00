"""The data path of a trial: sharding, batching by index, and replayable augmentation.

In-memory splits (digits, synthetic, CIFAR-sized) stay whole tensors, moved to the device once,
and a batch is one index operation; file-backed sets go through a DataLoader. Augmentation is
replayed, not random: `data.augment.views` fixed views of the training split, view `v` drawing
each sample's flip and crop offset from a generator seeded by (data.seed, v), and epoch `e`
using view `e % views`. The same (sample, view) is therefore the same image in every trial and
every epoch, which is what lets the sweep's teacher cache hold the teacher's outputs exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from lepton_ray.config import AugmentConfig


def world() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_indices(num_samples: int, epoch: int, seed: int) -> list[int]:
    """This rank's disjoint shard of a seeded per-epoch shuffle; equal length on every rank (DDP needs it)."""
    rank, world_size = world()
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 10_007 + epoch)).tolist()
    per_rank = num_samples // world_size
    return order[rank * per_rank : (rank + 1) * per_rank]


def eval_indices(num_samples: int) -> list[int]:
    """Strided shard with no padding, so all-reduced counts cover each sample exactly once."""
    rank, world_size = world()
    return list(range(rank, num_samples, world_size))


@dataclass(frozen=True)
class AugmentView:
    """One fixed augmentation of the whole training split: per-sample flip and crop offset."""

    number: int
    flips: torch.Tensor
    """(num_samples,) bool: mirror the sample horizontally."""
    offsets: torch.Tensor
    """(num_samples, 2) long in [0, 2 * padding]: top-left corner of the crop in the padded image."""
    padding: int

    def apply(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Augment a batch (N, C, H, W) whose samples sit at `indices` of the training split."""
        flips = self.flips[indices.cpu()].to(images.device)
        images = torch.where(flips[:, None, None, None], images.flip(-1), images)
        if self.padding == 0:
            return images
        height, width = images.shape[-2:]
        padded = F.pad(images, (self.padding,) * 4)
        offsets = self.offsets[indices.cpu()].to(images.device)
        rows = offsets[:, :1] + torch.arange(height, device=images.device)
        cols = offsets[:, 1:] + torch.arange(width, device=images.device)
        picked = padded[torch.arange(len(images), device=images.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return picked.permute(0, 3, 1, 2).contiguous()


def augment_view(cfg: AugmentConfig | None, num_samples: int, epoch: int, data_seed: int) -> AugmentView | None:
    """The view epoch `epoch` trains on (None without augmentation)."""
    if cfg is None:
        return None
    number = epoch % cfg.views
    generator = torch.Generator().manual_seed(data_seed * 1_000_003 + number)
    flips = torch.rand(num_samples, generator=generator) < 0.5 if cfg.hflip else torch.zeros(num_samples, dtype=torch.bool)
    offsets = torch.randint(0, 2 * cfg.crop_padding + 1, (num_samples, 2), generator=generator)
    return AugmentView(number, flips, offsets, cfg.crop_padding)


def num_views(cfg: AugmentConfig | None) -> int:
    return 1 if cfg is None else cfg.views


class Batch(NamedTuple):
    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    """Positions of the samples in their split (keys of the teacher cache)."""
    view: int = 0
    """Augmentation view the images went through (0 without augmentation)."""


def iterate_batches(
    dataset: Dataset, indices: list[int], batch_size: int, device: torch.device, view: AugmentView | None = None
) -> Iterator[Batch]:
    """In-memory tensors are batched by indexing (no per-sample DataLoader); other data sets use a DataLoader."""
    if isinstance(dataset, TensorDataset):
        all_images, all_labels = dataset.tensors[:2]
        chunks = ((all_images[positions], all_labels[positions], positions) for positions in _index_chunks(indices, batch_size, all_images.device))
    else:
        loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=0)
        chunks = ((images, labels, positions) for (images, labels), positions in zip(loader, _index_chunks(indices, batch_size, torch.device("cpu"))))
    for images, labels, positions in chunks:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if view is not None:
            images = view.apply(images, positions)
        yield Batch(images, labels, positions, 0 if view is None else view.number)


def _index_chunks(indices: list[int], batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    order = torch.as_tensor(indices, dtype=torch.long, device=device)
    yield from order.split(batch_size)


def on_device(dataset: Dataset, device: torch.device) -> Dataset:
    """An in-memory split moved to `device` once (e.g. the GPU), so batching never copies; others as they are."""
    if isinstance(dataset, TensorDataset) and device.type != "cpu":
        return TensorDataset(*(tensor.to(device) for tensor in dataset.tensors))
    return dataset
