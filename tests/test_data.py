"""Data sets read from disk: (Fashion-)MNIST idx files in both layouts, and normalisation from the training split only.

Tiny idx releases are written into tmp_path; nothing here needs the network, Ray or Debian's package.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lepton_ray.data import datasets as data_module
from lepton_ray.config import DataConfig
from lepton_ray.data.datasets import IDX_FILES, build_data
from lepton_ray.data.splits import UNLABELED, split_indices
from lepton_ray.errors import ConfigError, DataError

NUM_TRAIN, NUM_TEST = 100, 20
RAW_FOLDER = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}


def idx_bytes(array: np.ndarray) -> bytes:
    return struct.pack(f">I{array.ndim}I", 0x0800 + array.ndim, *array.shape) + array.astype(np.uint8).tobytes()


def write_release(folder: Path, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Four idx files of 28x28 images, 10 classes; the test images are brighter than the training ones."""
    rng = np.random.default_rng(seed)
    arrays = {
        IDX_FILES[0]: rng.integers(0, 200, (NUM_TRAIN, 28, 28)),
        IDX_FILES[1]: np.arange(NUM_TRAIN) % 10,
        IDX_FILES[2]: rng.integers(60, 256, (NUM_TEST, 28, 28)),
        IDX_FILES[3]: rng.permutation(np.arange(NUM_TEST) % 10),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        raw = idx_bytes(array)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


def train_statistics_reference(train_images: torch.Tensor, train_labels: np.ndarray, cfg: DataConfig):
    """Split indices and per-channel mean/std over exactly the training split, computed independently."""
    train, val, _, _ = split_indices(train_labels, cfg, with_test=False)
    pool = train_images[train]
    return train, val, pool.mean(dim=(0, 2, 3), keepdim=True), pool.std(dim=(0, 2, 3), keepdim=True)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
@pytest.mark.parametrize("layout", ["flat", "torchvision_raw"])
@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_idx_release_loads_with_official_test_split_and_labels_and_train_only_normalisation(tmp_path, name, layout, gz):
    folder = tmp_path if layout == "flat" else tmp_path / RAW_FOLDER[name] / "raw"
    raw = write_release(folder, gz)
    cfg = DataConfig(name=name, root=tmp_path)
    data = build_data(cfg)

    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.test) == NUM_TEST and len(data.train) + len(data.val) == NUM_TRAIN
    assert data.train.tensors[0].dtype == torch.float32 and data.train.tensors[0].shape[1:] == (1, 28, 28)

    train_pool = torch.tensor(raw[IDX_FILES[0]], dtype=torch.float32).unsqueeze(1) / 255
    train, val, mean, std = train_statistics_reference(train_pool, raw[IDX_FILES[1]], cfg)
    test_images = torch.tensor(raw[IDX_FILES[2]], dtype=torch.float32).unsqueeze(1) / 255
    assert torch.allclose(data.train.tensors[0], (train_pool[train] - mean) / std, atol=1e-5)
    assert torch.allclose(data.val.tensors[0], (train_pool[val] - mean) / std, atol=1e-5)
    assert torch.allclose(data.test.tensors[0], (test_images - mean) / std, atol=1e-5)
    assert data.train.tensors[1].tolist() == raw[IDX_FILES[1]][train].tolist()
    assert data.val.tensors[1].tolist() == raw[IDX_FILES[1]][val].tolist()
    assert data.test.tensors[1].tolist() == raw[IDX_FILES[3]].tolist(), "the t10k files are the test split, in order"
    assert set(data.val.tensors[1].tolist()) == set(range(10)), "stratified: every class in val"


def test_idx_training_split_has_zero_mean_unit_std_and_the_other_splits_do_not(tmp_path):
    write_release(tmp_path, gz=True)
    data = build_data(DataConfig(name="fashion_mnist", root=tmp_path))
    train_images = data.train.tensors[0]
    assert abs(train_images.mean().item()) < 1e-5 and abs(train_images.std().item() - 1) < 1e-5
    everything = torch.cat([train_images, data.val.tensors[0], data.test.tensors[0]])
    assert everything.mean().item() > 0.1, "statistics over all images would centre the brighter test images too"


def test_idx_splits_are_seeded(tmp_path):
    write_release(tmp_path, gz=False)
    first, again, other = (build_data(DataConfig(name="mnist", root=tmp_path, seed=seed)) for seed in (0, 0, 1))
    assert torch.equal(first.val.tensors[0], again.val.tensors[0]) and torch.equal(first.val.tensors[1], again.val.tensors[1])
    assert not torch.equal(first.val.tensors[0], other.val.tensors[0])


def test_idx_label_fraction_hides_training_labels_only(tmp_path):
    write_release(tmp_path, gz=True)
    data = build_data(DataConfig(name="mnist", root=tmp_path, label_fraction=0.2))
    train_labels = data.train.tensors[1]
    keep = round(len(train_labels) * 0.2)
    assert (train_labels == UNLABELED).sum().item() == len(train_labels) - keep
    assert set(train_labels[train_labels != UNLABELED].tolist()) == set(range(10)), "each class keeps some labels"
    assert (data.val.tensors[1] != UNLABELED).all() and (data.test.tensors[1] != UNLABELED).all()


def corrupt_bad_magic(path: Path) -> None:
    path.write_bytes(b"\x00\x00\x08\x01" + path.read_bytes()[4:])


def corrupt_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
@pytest.mark.parametrize("corrupt", [corrupt_bad_magic, corrupt_truncate], ids=["bad_magic", "truncated"])
def test_corrupt_idx_file_is_a_one_line_data_error_naming_data_root_and_the_file(tmp_path, corrupt, gz):
    write_release(tmp_path, gz=gz)
    broken = tmp_path / (IDX_FILES[2] + (".gz" if gz else ""))
    if gz:
        inner = tmp_path / "inner"
        inner.write_bytes(gzip.decompress(broken.read_bytes()))
        corrupt(inner)
        broken.write_bytes(gzip.compress(inner.read_bytes()))
    else:
        corrupt(broken)
    with pytest.raises(DataError, match=r"^data\.root: ") as caught:
        build_data(DataConfig(name="fashion_mnist", root=tmp_path))
    assert str(broken) in str(caught.value) and "\n" not in str(caught.value)


def truncate_stream(data: bytes) -> bytes:
    return data[:-20]


def zero_middle_of_stream(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(200) + data[middle + 200:]


def invalid_deflate_block(data: bytes) -> bytes:
    return data[:10] + b"\xff" * 16 + data[26:]  # after the 10-byte gzip header; block type 3 is reserved (zlib.error)


@pytest.mark.parametrize("damage", [truncate_stream, zero_middle_of_stream, invalid_deflate_block], ids=["truncated", "crc_mismatch", "invalid_deflate"])
def test_damaged_gzip_stream_is_a_data_error_naming_the_file(tmp_path, damage):
    write_release(tmp_path, gz=True)
    broken = tmp_path / (IDX_FILES[0] + ".gz")
    broken.write_bytes(damage(broken.read_bytes()))
    with pytest.raises(DataError, match=r"^data\.root: cannot read .*train-images-idx3-ubyte\.gz") as caught:
        build_data(DataConfig(name="mnist", root=tmp_path))
    assert "\n" not in str(caught.value)


def test_labels_file_of_another_length_is_a_data_error_naming_it(tmp_path):
    write_release(tmp_path, gz=False)
    (tmp_path / IDX_FILES[3]).write_bytes(idx_bytes(np.arange(NUM_TEST - 1) % 10))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte' has 19 labels for 20 images"):
        build_data(DataConfig(name="mnist", root=tmp_path))


def test_missing_idx_file_is_a_data_error_naming_it_and_both_layouts(tmp_path):
    write_release(tmp_path, gz=False)
    (tmp_path / IDX_FILES[3]).unlink()
    with pytest.raises(DataError, match=r"^data\.root: t10k-labels-idx1-ubyte\[\.gz\] not found in .*MNIST/raw"):
        build_data(DataConfig(name="mnist", root=tmp_path))


def test_mnist_without_root_says_set_data_root_or_download(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.root: not set for 'mnist'; set data\.root .* or data\.download: true"):
        build_data(DataConfig(name="mnist"))


def test_fashion_mnist_without_root_reads_the_debian_folder_when_it_exists_and_else_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "FASHION_MNIST_DEBIAN", tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"^data\.root: not set for 'fashion_mnist'.*data\.download: true.*dataset-fashion-mnist"):
        build_data(DataConfig(name="fashion_mnist"))
    write_release(tmp_path / "debian", gz=True)
    monkeypatch.setattr(data_module, "FASHION_MNIST_DEBIAN", tmp_path / "debian")
    assert len(build_data(DataConfig(name="fashion_mnist")).test) == NUM_TEST


def test_download_fetches_through_torchvision_into_data_root_and_reads_its_raw_folder(tmp_path, monkeypatch):
    import torchvision

    calls = []

    class OfflineFashionMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, download))
            write_release(Path(root) / "FashionMNIST" / "raw", gz=True)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", OfflineFashionMNIST)
    data = build_data(DataConfig(name="fashion_mnist", root=tmp_path, download=True))
    assert calls == [(str(tmp_path), True)] and len(data.test) == NUM_TEST


def test_failed_download_is_a_data_error_naming_data_download(tmp_path, monkeypatch):
    import torchvision

    def unreachable(root: str, train: bool, download: bool) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, got:\nURLError\n")

    monkeypatch.setattr(torchvision.datasets, "MNIST", unreachable)
    with pytest.raises(DataError, match=r"^data\.download: fetching MNIST into .* failed \(Error downloading train-images") as caught:
        build_data(DataConfig(name="mnist", root=tmp_path, download=True))
    assert "\n" not in str(caught.value)


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
            self.classes = [f"c{index}" for index in range(10)]

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
