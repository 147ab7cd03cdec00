"""Data sets: normalisation statistics come from the training split only."""

from __future__ import annotations

import numpy as np
import torch

from lepton_ray.config import DataConfig
from lepton_ray.data import _split_indices, build_data


def train_statistics_reference(train_images: torch.Tensor, train_labels: np.ndarray, cfg: DataConfig):
    """Split indices and per-channel mean/std over exactly the training split, computed independently."""
    train, val, _, _ = _split_indices(train_labels, cfg, with_test=False)
    pool = train_images[train]
    return train, val, pool.mean(dim=(0, 2, 3), keepdim=True), pool.std(dim=(0, 2, 3), keepdim=True)


def test_digits_normalisation_uses_training_statistics_only():
    data = build_data(DataConfig())
    train_images = data.train.tensors[0]
    assert abs(train_images.mean().item()) < 1e-4 and abs(train_images.std().item() - 1) < 1e-4
    assert data.test.tensors[0].mean().item() != 0 and data.val.tensors[0].mean().item() != 0


def test_cifar_normalisation_uses_the_training_split_without_its_validation_part(tmp_path, monkeypatch):
    import torchvision

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            count = 100 if train else 20
            self.data = np.random.default_rng(count).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
            self.targets = (np.arange(count) % 10).tolist()

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    cfg = DataConfig(name="cifar10", root=tmp_path)
    data = build_data(cfg)
    train_set, test_set = FakeCIFAR10("", True, False), FakeCIFAR10("", False, False)
    train_pool = torch.tensor(train_set.data, dtype=torch.float32).permute(0, 3, 1, 2) / 255
    train, val, mean, std = train_statistics_reference(train_pool, np.array(train_set.targets), cfg)
    assert data.input_shape == (3, 32, 32) and len(data.test) == 20
    assert torch.allclose(data.train.tensors[0], (train_pool[train] - mean) / std, atol=1e-5)
    assert torch.allclose(data.val.tensors[0], (train_pool[val] - mean) / std, atol=1e-5)
    test_images = torch.tensor(test_set.data, dtype=torch.float32).permute(0, 3, 1, 2) / 255
    assert torch.allclose(data.test.tensors[0], (test_images - mean) / std, atol=1e-5)
