"""Your own data set, named by import path (`data.name: "my_data:load"`): the contract of its factory
(`TensorData`) and how lepton-ray turns what it returns into seeded, stratified, normalised splits."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import torch

from lepton_ray.config import DataConfig
from lepton_ray.data.contract import DataContract
from lepton_ray.data.splits import DataSplits, official_test_splits, tensor_splits
from lepton_ray.errors import ConfigError


@dataclass(frozen=True)
class TensorData:
    """What your own data factory returns (`data.name: "my_data:load"`, called as `load(**data.options)`).

    `images`: (N, C, H, W) or (N, H, W), any numeric dtype, in your raw units; `labels`: (N,) integers
    in 0..num_classes-1; tensors or numpy arrays. Give `test_images`/`test_labels` when the data has its
    own test split. lepton-ray carves validation (and test, when none is given) out of the training
    images, seeded by `data.seed` and stratified, and normalises every split with the training split's
    per-channel mean and std. A factory may return a `DataSplits` instead, to choose the splits itself.
    """

    images: Any
    labels: Any
    test_images: Any = None
    test_labels: Any = None
    num_classes: int | None = None
    """Default: the largest label + 1."""
    class_names: list[str] | None = None
    """In label order; written into the exported files (default: "0", "1", ...)."""


def user_data_factory(load: Callable[..., Any], name: str) -> Callable[[DataConfig], DataSplits]:
    """Adapts a factory named by import path to the registry's `DataConfig -> DataSplits` contract."""

    def build(cfg: DataConfig) -> DataSplits:
        try:
            made = load(**cfg.options)
        except Exception as err:  # the user's code: whatever it raises is reported in one line
            reason = (str(err).strip().splitlines() or [""])[0][:200]
            raise ConfigError(f"data.name: {name} raised {type(err).__name__}: {reason}; fix the factory or data.options") from None
        if isinstance(made, DataSplits):
            return replace(made, factory_splits=True)
        if not isinstance(made, TensorData):
            raise ConfigError(f"data.name: {name} returned a {type(made).__name__}; return lepton_ray.data.TensorData(images, labels, ...) or DataSplits")
        return _splits_of(made, cfg, name)

    build.__doc__ = f"Your data factory {name} (TensorData -> seeded, stratified, normalised splits)."
    return build


def _splits_of(data: TensorData, cfg: DataConfig, name: str) -> DataSplits:
    images, labels = _as_images(data.images, name, "images"), _as_labels(data.labels, name, "labels")
    has_test = data.test_images is not None or data.test_labels is not None
    test = (_as_images(data.test_images, name, "test_images"), _as_labels(data.test_labels, name, "test_labels")) if has_test else None
    for (part_images, part_labels), what in [((images, labels), "images"), *([(test, "test_images")] if test else [])]:
        if len(part_images) != len(part_labels):
            raise ConfigError(f"data.name: {name} returned {len(part_images)} {what} but {len(part_labels)} labels; return one label per image")
    if test and test[0].shape[1:] != images.shape[1:]:
        raise ConfigError(f"data.name: {name} returned test images of shape {list(test[0].shape[1:])}, training images of {list(images.shape[1:])}; make them match")
    largest = int(max(labels.max(), test[1].max() if test else 0))
    num_classes = data.num_classes or largest + 1
    if int(labels.min()) < 0 or largest >= num_classes:
        raise ConfigError(f"data.name: {name} returned labels outside 0..{num_classes - 1}; labels must be class indices")
    names = data.class_names or [str(index) for index in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(f"data.name: {name} returned {len(names)} class_names for {num_classes} classes; give one name per class")
    contract = DataContract.unnormalised(name, tuple(images.shape[1:]), names, f"the images {name} returns, in its units", None, 1.0)
    if test:
        return official_test_splits(images, labels, *test, cfg, contract)
    return tensor_splits(images, labels, cfg, contract)


def _as_images(values: Any, name: str, what: str) -> torch.Tensor:
    images = torch.as_tensor(np.asarray(values)).float()
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or len(images) == 0:
        raise ConfigError(f"data.name: {name} returned {what} of shape {list(images.shape)}; return (N, C, H, W) or (N, H, W) images")
    return images


def _as_labels(values: Any, name: str, what: str) -> torch.Tensor:
    labels = np.asarray(values)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"data.name: {name} returned {what} of shape {list(labels.shape)} and dtype {labels.dtype}; return (N,) integer class indices")
    return torch.as_tensor(labels, dtype=torch.long)
