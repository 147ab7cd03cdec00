"""Data set registry: each entry turns a `DataConfig` into seeded train/val/test splits.

Small sets (digits, synthetic, CIFAR, (Fashion-)MNIST) are held in memory as tensors; nothing is
downloaded unless a workflow sets `download: true`. Normalisation statistics come from the training
split only.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lepton_ray.config import DataConfig
from lepton_ray.data.contract import DataContract
from lepton_ray.data.image_folder import OPTIONS as IMAGE_FOLDER_OPTIONS, image_folder
from lepton_ray.data import text_sets
from lepton_ray.data.splits import DataSplits, official_test_splits, tensor_splits
from lepton_ray.data.user_data import user_data_factory
from lepton_ray.errors import ConfigError, DataError
from lepton_ray.registry import Registry


DataFactory = Callable[[DataConfig], DataSplits]


DATASETS: Registry[DataFactory] = Registry("data set", "data.name", imported=user_data_factory)


def build_data(cfg: DataConfig) -> DataSplits:
    return DATASETS.get(cfg.name)(cfg)


def _options(cfg: DataConfig, allowed: dict[str, object]) -> dict[str, object]:
    unknown = set(cfg.options) - set(allowed)
    if unknown:
        raise ConfigError(f"data.options.{sorted(unknown)[0]}: unknown option for {cfg.name!r}; allowed: {sorted(allowed)}")
    return {**allowed, **cfg.options}


@DATASETS.register("digits")
def digits(cfg: DataConfig) -> DataSplits:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), scaled to the training split's zero mean, unit std."""
    from sklearn.datasets import load_digits

    _options(cfg, {})
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    contract = DataContract.unnormalised(
        "digits", images.shape[1:], [str(name) for name in bunch.target_names], "8x8 grey pixel intensities 0-16 (scikit-learn load_digits().images)", (0, 16), 1 / 16,
    )
    return tensor_splits(images, torch.tensor(bunch.target, dtype=torch.long), cfg, contract)


@DATASETS.register("synthetic")
def synthetic(cfg: DataConfig) -> DataSplits:
    """Generated class prototypes plus Gaussian noise: learnable, reproducible, instant."""
    opts = _options(cfg, {"num_samples": 600, "num_classes": 10, "channels": 1, "image_size": 8, "noise": 1.0})
    generator = torch.Generator().manual_seed(cfg.seed)
    num_classes, size = int(opts["num_classes"]), int(opts["image_size"])
    shape = (int(opts["channels"]), size, size)
    prototypes = torch.randn((num_classes, *shape), generator=generator)
    labels = torch.arange(int(opts["num_samples"])) % num_classes
    noise = torch.randn((len(labels), *shape), generator=generator) * float(opts["noise"])
    contract = DataContract.unnormalised(
        "synthetic", shape, [f"class_{index}" for index in range(num_classes)], "generated prototypes plus Gaussian noise, used as they are", None, 1.0,
    )
    return tensor_splits(prototypes[labels] + noise, labels, cfg, contract, normalise=False)


def _cifar(cfg: DataConfig, dataset_cls_name: str, num_classes: int) -> DataSplits:
    import torchvision

    _options(cfg, {})
    if cfg.root is None:
        raise ConfigError(f"data.root: required for {cfg.name!r}; point it at the folder holding the extracted data set")
    dataset_cls = getattr(torchvision.datasets, dataset_cls_name)
    try:
        train_set = dataset_cls(str(cfg.root), train=True, download=cfg.download)
        test_set = dataset_cls(str(cfg.root), train=False, download=cfg.download)
    except RuntimeError as err:
        raise DataError(
            f"data.root: {dataset_cls_name} files not found or corrupt under {str(cfg.root)!r} ({err}); "
            "prepare them once (see README 'Data') or set data.download: true on a machine with internet"
        ) from None

    def to_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.tensor(ds.data, dtype=torch.float32).permute(0, 3, 1, 2) / 255
        return images, torch.tensor(ds.targets, dtype=torch.long)

    contract = DataContract.unnormalised(
        cfg.name, (3, 32, 32), list(train_set.classes), "32x32 RGB pixel values 0-255 (channels first: transpose torchvision's HWC)", (0, 255), 1 / 255,
    )
    if len(contract.class_names) != num_classes:
        raise DataError(f"data.root: {dataset_cls_name} under {str(cfg.root)!r} names {len(contract.class_names)} classes, expected {num_classes}; replace its files")
    return official_test_splits(*to_tensors(train_set), *to_tensors(test_set), cfg, contract)


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig) -> DataSplits:
    """CIFAR-10 from torchvision's on-disk format under `data.root`; the official test set is the test split."""
    return _cifar(cfg, "CIFAR10", 10)


@DATASETS.register("cifar100")
def cifar100(cfg: DataConfig) -> DataSplits:
    """CIFAR-100 from torchvision's on-disk format under `data.root`."""
    return _cifar(cfg, "CIFAR100", 100)


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
"""The four files of an (Fashion-)MNIST release, each plain or gzipped (`.gz`)."""

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
"""Zalando's label names, in label order."""

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's `dataset-fashion-mnist` package puts the files; used when `data.root` is not set."""

_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}
"""idx header of unsigned-byte arrays with 3 (images) or 1 (labels) dimensions."""


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file (big-endian header: magic, then one uint32 per dimension, then uint8 data) as an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"data.root: cannot read {str(path)!r} ({err}); replace the file with an intact copy") from None
    header = 4 * (1 + ndim)
    if len(raw) < header or int.from_bytes(raw[:4], "big") != _IDX_MAGIC[ndim]:
        raise DataError(f"data.root: {str(path)!r} is not an idx file of {ndim}-d unsigned bytes (wrong magic number); replace it with the original file")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(dims)):
        raise DataError(f"data.root: {str(path)!r} holds {len(raw) - header} data bytes, its header says {dims}; the file is truncated or corrupt, replace it")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_root(cfg: DataConfig, default: Path | None) -> Path:
    if cfg.root is not None:
        return Path(cfg.root)
    if default is not None and default.is_dir() and not cfg.download:
        return default
    package = f", or apt-get install dataset-fashion-mnist (files in {default})" if default is not None else ""
    raise ConfigError(
        f"data.root: not set for {cfg.name!r}; set data.root to the folder holding its four idx files, "
        f"or data.download: true with data.root as the folder to download into{package}"
    )


def _find_idx(folders: list[Path], name: str) -> Path:
    for candidate in (folder / f"{name}{suffix}" for folder in folders for suffix in ("", ".gz")):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"data.root: {name}[.gz] not found in {' or '.join(repr(str(f)) for f in folders)}; "
        "point data.root at the folder holding the four idx files, or set data.download: true on a machine with internet"
    )


def _idx_dataset(cfg: DataConfig, torchvision_name: str, class_names: tuple[str, ...], default: Path | None = None) -> DataSplits:
    """(Fashion-)MNIST from idx files in `data.root` or torchvision's `<root>/<Name>/raw`: the official
    60k/10k split, validation carved from train, images (N, 1, 28, 28) in [0, 1] then normalised."""
    _options(cfg, {})
    root = _idx_root(cfg, default)
    if cfg.download:
        import torchvision

        try:
            getattr(torchvision.datasets, torchvision_name)(str(root), train=True, download=True)
        except (RuntimeError, OSError) as err:
            reason = str(err).strip().splitlines()[0]  # torchvision lists every mirror it tried, one per line
            raise DataError(f"data.download: fetching {torchvision_name} into {str(root)!r} failed ({reason}); check the network or copy the files there") from None
    folders = [root, root / torchvision_name / "raw"]
    tensors = []
    for images_name, labels_name in (IDX_FILES[:2], IDX_FILES[2:]):
        images_path, labels_path = _find_idx(folders, images_name), _find_idx(folders, labels_name)
        images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
        if len(images) != len(labels):
            raise DataError(f"data.root: {str(labels_path)!r} has {len(labels)} labels for {len(images)} images in {str(images_path)!r}; replace both with one release's files")
        if labels.max(initial=0) >= 10:
            raise DataError(f"data.root: {str(labels_path)!r} has label {labels.max()}, expected 0-9; replace it with the original file")
        tensors += [torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255, torch.tensor(labels, dtype=torch.long)]
    contract = DataContract.unnormalised(cfg.name, (1, 28, 28), list(class_names), "28x28 grey pixel values 0-255 (idx file bytes)", (0, 255), 1 / 255)
    return official_test_splits(*tensors, cfg, contract)


@DATASETS.register("fashion_mnist")
def fashion_mnist(cfg: DataConfig) -> DataSplits:
    """Zalando's Fashion-MNIST (28x28 grey clothing, 60k train / 10k test, 10 classes); default root: Debian's package folder."""
    return _idx_dataset(cfg, "FashionMNIST", FASHION_MNIST_CLASSES, FASHION_MNIST_DEBIAN)


@DATASETS.register("mnist")
def mnist(cfg: DataConfig) -> DataSplits:
    """LeCun's MNIST handwritten digits (28x28 grey, 60k train / 10k test, 10 classes)."""
    return _idx_dataset(cfg, "MNIST", tuple(str(digit) for digit in range(10)))


@DATASETS.register("imagefolder")
def imagefolder(cfg: DataConfig) -> DataSplits:
    """Your own `root/<class>/<image>` trees (`data.options`: test_root, val_root, image_size, channels), decoded once into memory."""
    return image_folder(cfg, _options(cfg, IMAGE_FOLDER_OPTIONS))


@DATASETS.register("reviews")
def reviews(cfg: DataConfig) -> DataSplits:
    """Amazon fine-food reviews as token ids (4,000 train / 1,000 test, great / other); needs the `text` extra.

    `pip install 'lepton-ray[text]'`; `data.options`: max_words, min_count, max_length (the vocabulary)."""
    return text_sets.reviews(cfg, _options(cfg, text_sets.VOCABULARY_OPTIONS))


@DATASETS.register("text_csv")
def text_csv(cfg: DataConfig) -> DataSplits:
    """Your own CSV of texts and labels (`data.root`) as token ids.

    `data.options`: text_column, label_column, test_file, and the vocabulary's max_words, min_count, max_length."""
    return text_sets.text_csv(cfg, _options(cfg, text_sets.CSV_OPTIONS))
