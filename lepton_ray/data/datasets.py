"""Data set registry: each entry turns a `DataConfig` into seeded train/val/test splits.

Small sets (digits, synthetic, CIFAR, (Fashion-)MNIST) are held in memory as tensors; nothing is
downloaded unless a workflow sets `download: true`. Normalisation statistics come from the training
split only.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from lepton_ray.config import DataConfig
from lepton_ray.data.contract import DataContract
from lepton_ray.errors import ConfigError, DataError
from lepton_ray.registry import Registry


@dataclass(frozen=True)
class DataSplits:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    """(channels, height, width) of one sample."""
    contract: DataContract
    """How raw inputs become these tensors, and the class names: what the exported files carry."""

    def __post_init__(self) -> None:
        if tuple(self.contract.input_shape) != tuple(self.input_shape) or len(self.contract.class_names) != self.num_classes:
            raise DataError(
                f"DataSplits.contract of {self.contract.dataset!r}: shape {self.contract.input_shape} and {len(self.contract.class_names)} "
                f"class names, but the splits have {tuple(self.input_shape)} and {self.num_classes} classes; build the contract from the same data"
            )

    def summary(self) -> str:
        """Images per split, classes, input shape: lengths only, no image is read."""
        return (
            f"{len(self.train)} train / {len(self.val)} val / {len(self.test)} test images, {self.num_classes} classes, "
            f"input {'x'.join(map(str, self.input_shape))} (channels x height x width)"
        )


UNLABELED = -1
"""Label of training samples kept as a transfer set without labels (`data.label_fraction` < 1):
distillation losses see them, the hard-label loss skips them."""

DataFactory = Callable[[DataConfig], DataSplits]


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


def user_data_factory(load: Callable[..., Any], name: str) -> DataFactory:
    """Adapts a factory named by import path to the registry's `DataConfig -> DataSplits` contract."""

    def build(cfg: DataConfig) -> DataSplits:
        try:
            made = load(**cfg.options)
        except Exception as err:  # the user's code: whatever it raises is reported in one line
            reason = (str(err).strip().splitlines() or [""])[0][:200]
            raise ConfigError(f"data.name: {name} raised {type(err).__name__}: {reason}; fix the factory or data.options") from None
        if isinstance(made, DataSplits):
            return made
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
        return _official_test_splits(images, labels, *test, cfg, contract)
    return _tensor_splits(images, labels, cfg, contract)


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


DATASETS: Registry[DataFactory] = Registry("data set", "data.name", imported=user_data_factory)


def build_data(cfg: DataConfig) -> DataSplits:
    return DATASETS.get(cfg.name)(cfg)


def _options(cfg: DataConfig, allowed: dict[str, object]) -> dict[str, object]:
    unknown = set(cfg.options) - set(allowed)
    if unknown:
        raise ConfigError(f"data.options.{sorted(unknown)[0]}: unknown option for {cfg.name!r}; allowed: {sorted(allowed)}")
    return {**allowed, **cfg.options}


def _split_indices(labels: np.ndarray, cfg: DataConfig, with_test: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded stratified split into train/val(/test), plus the train indices whose labels are hidden."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    test = np.array([], dtype=int)
    if with_test:
        indices, test = train_test_split(indices, test_size=cfg.test_fraction, stratify=labels, random_state=cfg.seed)
    val_share = cfg.val_fraction / (1 - cfg.test_fraction) if with_test else cfg.val_fraction
    train, val = train_test_split(indices, test_size=val_share, stratify=labels[indices], random_state=cfg.seed)
    hidden = np.array([], dtype=int)
    if cfg.label_fraction < 1:
        keep = max(int(round(len(train) * cfg.label_fraction)), len(np.unique(labels)))
        _, hidden = train_test_split(train, train_size=keep, stratify=labels[train], random_state=cfg.seed)
    return np.sort(train), np.sort(val), np.sort(test), hidden


def _hide_labels(labels: torch.Tensor, hidden: np.ndarray) -> torch.Tensor:
    masked = labels.clone()
    masked[torch.as_tensor(hidden, dtype=torch.long)] = UNLABELED
    return masked


class _HiddenLabels(Dataset):
    """Wraps a file-backed data set so that hidden training samples report label -1."""

    def __init__(self, dataset: Dataset, hidden: set[int]) -> None:
        self.dataset, self.hidden = dataset, hidden

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, UNLABELED if index in self.hidden else label


def _tensor_splits(images: torch.Tensor, labels: torch.Tensor, cfg: DataConfig, contract: DataContract, normalise: bool = True) -> DataSplits:
    """Seeded stratified train/val/test out of one pool of images (for sets without an official test split)."""
    train, val, test, hidden = _split_indices(labels.numpy(), cfg, with_test=True)
    return _assemble(images, labels, train, val, hidden, (images[test], labels[test]), contract, normalise)


def _official_test_splits(
    train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor, test_labels: torch.Tensor,
    cfg: DataConfig, contract: DataContract,
) -> DataSplits:
    """Seeded stratified train/val carved out of an official training set; the official test set is the test split."""
    train, val, _, hidden = _split_indices(train_labels.numpy(), cfg, with_test=False)
    return _assemble(train_images, train_labels, train, val, hidden, (test_images, test_labels), contract, normalise=True)


def _assemble(
    images: torch.Tensor, labels: torch.Tensor, train: np.ndarray, val: np.ndarray, hidden: np.ndarray,
    test: tuple[torch.Tensor, torch.Tensor], contract: DataContract, normalise: bool,
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
    return _tensor_splits(images, torch.tensor(bunch.target, dtype=torch.long), cfg, contract)


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
    return _tensor_splits(prototypes[labels] + noise, labels, cfg, contract, normalise=False)


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
    return _official_test_splits(*to_tensors(train_set), *to_tensors(test_set), cfg, contract)


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
    return _official_test_splits(*tensors, cfg, contract)


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
    """A local `root/<class>/<image>` tree, resized to `image_size` and split with the data seed."""
    import torchvision
    from torchvision import transforms

    opts = _options(cfg, {"image_size": 32, "channels": 3})
    if cfg.root is None or not Path(cfg.root).is_dir():
        raise DataError(f"data.root: folder {str(cfg.root)!r} not found; point it at a root/<class>/<image> tree")
    size, channels = int(opts["image_size"]), int(opts["channels"])
    steps = [transforms.Resize((size, size))]
    if channels == 1:
        steps.append(transforms.Grayscale())
    mean = std = [0.5] * channels  # maps ToTensor's [0, 1] onto [-1, 1]
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    try:
        folder = torchvision.datasets.ImageFolder(str(cfg.root), transform=transforms.Compose(steps))
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"data.root: no images under {str(cfg.root)!r} ({err}); expected root/<class>/<image>") from None
    train, val, test, hidden = _split_indices(np.array(folder.targets), cfg, with_test=True)
    colour = "grey" if channels == 1 else "RGB"
    contract = DataContract.unnormalised(
        "imagefolder", (channels, size, size), folder.classes, f"an image file, resized to {size}x{size} (bilinear) and converted to {colour}, pixel values 0-255",
        (0, 255), 1 / 255,
    ).with_statistics(mean, std)
    return DataSplits(
        Subset(_HiddenLabels(folder, set(hidden.tolist())), train.tolist()),
        Subset(folder, val.tolist()), Subset(folder, test.tolist()),
        len(folder.classes), (channels, size, size), contract,
    )
