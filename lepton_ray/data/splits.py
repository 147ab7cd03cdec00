"""Seeded, stratified train/val/test splits held in memory, normalised with the training split's own
statistics: what every data set (ours, or yours through `TensorData`) is turned into."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from lepton_ray.config import DataConfig
from lepton_ray.data.contract import DataContract, TokenContract
from lepton_ray.data.inputs import ModelInput
from lepton_ray.errors import DataError


@dataclass(frozen=True)
class DataSplits:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    """(channels, height, width) of one image, or (max_length,) of one text's token ids."""
    contract: DataContract | TokenContract
    """How raw inputs become these tensors, and the class names: what the exported files carry."""
    factory_splits: bool = False
    """True when a data factory returned these splits itself (`data/user_data.py`): `data.seed`, `val_fraction`,
    `test_fraction` and `label_fraction` were not applied to them."""

    def __post_init__(self) -> None:
        if tuple(self.contract.input_shape) != tuple(self.input_shape) or len(self.contract.class_names) != self.num_classes:
            raise DataError(
                f"DataSplits.contract of {self.contract.dataset!r}: shape {self.contract.input_shape} and {len(self.contract.class_names)} "
                f"class names, but the splits have {tuple(self.input_shape)} and {self.num_classes} classes; build the contract from the same data"
            )

    @property
    def model_input(self) -> ModelInput:
        """What one model input is: shape, dtype, example batches (`data/inputs.py`)."""
        return self.contract.model_input

    @property
    def input_dtype(self) -> str:
        return self.model_input.dtype

    def summary(self) -> str:
        """Samples per split, classes, input shape: lengths only, no sample is read."""
        return f"{len(self.train)} train / {len(self.val)} val / {len(self.test)} test {self.contract.samples}, {self.num_classes} classes, {self.contract.describe_shape()}"


UNLABELED = -1
"""Label of training samples kept as a transfer set without labels (`data.label_fraction` < 1):
distillation losses see them, the hard-label loss skips them."""

def split_indices(labels: np.ndarray, cfg: DataConfig, with_test: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded stratified split into train/val(/test), plus the train indices whose labels are hidden."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    test = np.array([], dtype=int)
    if with_test:
        indices, test = train_test_split(indices, test_size=cfg.test_fraction, stratify=labels, random_state=cfg.seed)
    val_share = cfg.val_fraction / (1 - cfg.test_fraction) if with_test else cfg.val_fraction
    train, val = train_test_split(indices, test_size=val_share, stratify=labels[indices], random_state=cfg.seed)
    return np.sort(train), np.sort(val), np.sort(test), hidden_labels(train, labels, cfg)


def hidden_labels(train: np.ndarray, labels: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """The training indices whose labels `data.label_fraction` < 1 hides (seeded, stratified; none at 1)."""
    from sklearn.model_selection import train_test_split

    if cfg.label_fraction >= 1:
        return np.array([], dtype=int)
    keep = max(int(round(len(train) * cfg.label_fraction)), len(np.unique(labels)))
    return train_test_split(train, train_size=keep, stratify=labels[train], random_state=cfg.seed)[1]


def _hide_labels(labels: torch.Tensor, hidden: np.ndarray) -> torch.Tensor:
    masked = labels.clone()
    masked[torch.as_tensor(hidden, dtype=torch.long)] = UNLABELED
    return masked


def tensor_splits(images: torch.Tensor, labels: torch.Tensor, cfg: DataConfig, contract: DataContract, normalise: bool = True) -> DataSplits:
    """Seeded stratified train/val/test out of one pool of images (for sets without an official test split)."""
    train, val, test, hidden = split_indices(labels.numpy(), cfg, with_test=True)
    return assemble_splits(images, labels, train, val, hidden, (images[test], labels[test]), contract, normalise)


def official_test_splits(
    train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor, test_labels: torch.Tensor,
    cfg: DataConfig, contract: DataContract,
) -> DataSplits:
    """Seeded stratified train/val carved out of an official training set; the official test set is the test split."""
    train, val, _, hidden = split_indices(train_labels.numpy(), cfg, with_test=False)
    return assemble_splits(train_images, train_labels, train, val, hidden, (test_images, test_labels), contract, normalise=True)


def assemble_splits(
    images: torch.Tensor, labels: torch.Tensor, train: np.ndarray, val: np.ndarray, hidden: np.ndarray,
    test: tuple[torch.Tensor, torch.Tensor], contract: DataContract | TokenContract, normalise: bool,
) -> DataSplits:
    """In-memory splits, scaled by the per-channel mean/std of the training split only, so that no
    validation or test statistic leaks into what the model sees while training; the contract records them."""
    split_images = [images[train], images[val], test[0]]
    if normalise:
        mean = split_images[0].mean(dim=(0, 2, 3), keepdim=True)
        std = split_images[0].std(dim=(0, 2, 3), keepdim=True)
        split_images = [(part - mean) / std for part in split_images]
        contract = contract.with_statistics(mean.flatten().tolist(), std.flatten().tolist())
    return DataSplits(
        TensorDataset(split_images[0], _hide_labels(labels, hidden)[train]),
        TensorDataset(split_images[1], labels[val]),
        TensorDataset(split_images[2], test[1]),
        len(contract.class_names),
        tuple(images.shape[1:]),
        contract,
    )


def given_splits(
    images: torch.Tensor, labels: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor] | None, test: tuple[torch.Tensor, torch.Tensor] | None,
    cfg: DataConfig, contract: DataContract,
) -> DataSplits:
    """Splits from a pool of training images plus the validation and test images a data set brings of its own
    (None: carved from the pool, seeded and stratified, as `tensor_splits` and `official_test_splits` do)."""
    from sklearn.model_selection import train_test_split

    if val is None and test is None:
        return tensor_splits(images, labels, cfg, contract)
    if val is None:
        return official_test_splits(images, labels, *test, cfg, contract)
    pool = np.arange(len(labels))
    if test is None:
        pool, carved = train_test_split(pool, test_size=cfg.test_fraction, stratify=labels.numpy(), random_state=cfg.seed)
        pool, carved = np.sort(pool), np.sort(carved)
        test = (images[carved], labels[carved])
    all_images, all_labels = torch.cat([images, val[0]]), torch.cat([labels, val[1]])
    val_indices = np.arange(len(labels), len(all_labels))
    return assemble_splits(all_images, all_labels, pool, val_indices, hidden_labels(pool, labels.numpy(), cfg), test, contract, normalise=True)
