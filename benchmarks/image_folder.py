"""Image-folder epochs against in-memory epochs: the same Fashion-MNIST images as a PNG tree and as idx tensors.

A seeded sample of Fashion-MNIST (6,000 training and 1,000 test images) is written as `train/<class>/<i>.png`
and `test/<class>/<i>.png`, then read three ways: `data.name: imagefolder` (decoded once into memory), the
same pixels as in-memory tensors straight from the idx bytes (what `fashion_mnist` does), and torchvision's
`ImageFolder` decoding every image every epoch through a DataLoader (the image-folder path before it was
decoded once). The workflow's student (labels only: the data path is what is timed) trains 3 epochs on each
in one process, one thread, epochs interleaved; the figure is the mean of epochs 2-3 (after the first).

    .venv/bin/python -m benchmarks.image_folder [--quick] [--data-root DIR]    # writes benchmarks/results/image_folder.json
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from benchmarks.common import MEASURED_KERNELS, REPO, Figure, StudentRun, measured_commit, write_result
from benchmarks.fashion_mnist import WORKFLOW
from lepton_ray.config import DataConfig, load_workflow
from lepton_ray.data.datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_DEBIAN, IDX_FILES, _find_idx, _read_idx
from lepton_ray.data.datasets import build_data
from lepton_ray.data.splits import given_splits

NAME = "image_folder"
SAMPLES = {False: (6000, 1000), True: (600, 100)}
EPOCHS = 3


def folder_names() -> list[str]:
    """Class folders that sort in Fashion-MNIST's label order ("0_t-shirt-top", ...)."""
    return [f"{index}_{name.lower().replace('/', '-').replace(' ', '-')}" for index, name in enumerate(FASHION_MNIST_CLASSES)]


def sample(data_root: Path, train_count: int, test_count: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Seeded samples of the idx files' raw uint8 images (N, 28, 28) and labels."""
    out = {}
    for split, (images_name, labels_name), count in (("train", IDX_FILES[:2], train_count), ("test", IDX_FILES[2:], test_count)):
        images, labels = _read_idx(_find_idx([data_root], images_name), 3), _read_idx(_find_idx([data_root], labels_name), 1)
        chosen = np.sort(np.random.default_rng(0).permutation(len(labels))[:count])
        out[split] = (images[chosen], labels[chosen])
    return out


def write_tree(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    from PIL import Image

    names = folder_names()
    for name in names:
        (folder / name).mkdir(parents=True)
    for index, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(folder / names[label] / f"{index:05d}.png")


def tree_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*.png"))


def file_backed(root: Path, cfg: DataConfig, in_memory):
    """torchvision's ImageFolder, every image decoded per access, scaled as the in-memory splits are (the old path)."""
    import torchvision
    from torchvision import transforms

    steps = transforms.Compose([transforms.Grayscale(), transforms.ToTensor(), transforms.Normalize(in_memory.contract.mean, in_memory.contract.std)])
    tree = torchvision.datasets.ImageFolder(str(root), transform=steps)
    same_count = np.sort(np.random.default_rng(cfg.seed).permutation(len(tree))[: len(in_memory.train)]).tolist()  # as many images as the train split
    return replace(in_memory, train=Subset(tree, same_count))


def run(quick: bool, data_root: Path) -> dict[str, Any]:
    commit = measured_commit()
    torch.set_num_threads(1)
    folder = REPO / "runs" / f"bench-{NAME}{'-quick' if quick else ''}"
    shutil.rmtree(folder, ignore_errors=True)
    samples = sample(data_root, *SAMPLES[quick])
    for split, (images, labels) in samples.items():
        write_tree(folder / split, images, labels)
    cfg = DataConfig(name="imagefolder", root=folder / "train", options={"test_root": str(folder / "test")})
    started = time.perf_counter()
    from_folder = build_data(cfg)
    decode_seconds = time.perf_counter() - started
    in_tree_order = [(images[order], labels[order]) for images, labels in samples.values() for order in [np.argsort(labels, kind="stable")]]
    (train_images, train_labels), (test_images, test_labels) = ((torch.tensor(i, dtype=torch.float32).unsqueeze(1) / 255, torch.tensor(l, dtype=torch.long))
                                                                for i, l in in_tree_order)  # class folder, then file name
    in_memory = given_splits(train_images, train_labels, None, (test_images, test_labels), cfg, from_folder.contract)
    identical = all(torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
                    for a, b in zip((from_folder.train, from_folder.val, from_folder.test), (in_memory.train, in_memory.val, in_memory.test)))
    variants = {"in_memory": in_memory, "imagefolder": from_folder, "decoded_every_epoch": file_backed(folder / "train", cfg, in_memory)}
    wf = load_workflow(WORKFLOW, {**MEASURED_KERNELS, "distillation.alpha": 0.0, "output_dir": str(folder / "runs"), "training.epochs": EPOCHS})
    runs = {name: StudentRun(wf, data, []) for name, data in variants.items()}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for epoch in range(EPOCHS):
        for name, student in runs.items():
            started = time.perf_counter()
            student.train_epoch(epoch)
            seconds[name].append(time.perf_counter() - started)
    after_first = {name: statistics.mean(values[1:]) for name, values in seconds.items()}
    return {
        "commit": commit,
        "setting": {"workflow": str(WORKFLOW.relative_to(REPO)), "train_images": len(samples["train"][1]), "test_images": len(samples["test"][1]),
                    "epochs": EPOCHS, "batch_size": wf.training.batch_size, "torch_threads": 1, "alpha": 0.0},
        "same_tensors_as_in_memory": identical,
        "decode_seconds": decode_seconds,
        "png_tree_bytes": tree_bytes(folder / "train") + tree_bytes(folder / "test"),
        "raw_pixel_bytes": sum(images.nbytes for images, _ in samples.values()),
        "epoch_seconds": seconds,
        "epoch_seconds_after_first": after_first,
        "imagefolder_over_in_memory": after_first["imagefolder"] / after_first["in_memory"],
        "decoded_every_epoch_over_in_memory": after_first["decoded_every_epoch"] / after_first["in_memory"],
    }


def figures(payload: dict[str, Any]) -> list[Figure]:
    return [
        Figure(NAME, "imagefolder / in-memory epoch time, epochs 2-3", payload["imagefolder_over_in_memory"], at_most=1.1),
        Figure(NAME, "decoded every epoch (torchvision ImageFolder) / in-memory epoch time", payload["decoded_every_epoch_over_in_memory"]),
        Figure(NAME, "imagefolder splits hold the in-memory path's exact tensors (1 = yes)", float(payload["same_tensors_as_in_memory"]), at_least=1),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {SAMPLES[True][0]} training images")
    parser.add_argument("--data-root", type=Path, default=FASHION_MNIST_DEBIAN, help="folder of the four Fashion-MNIST idx files")
    args = parser.parse_args(argv)
    payload = write_result(NAME, run(args.quick, args.data_root), args.quick)
    for figure in figures(payload):
        print(f"{figure.name}: {figure.value:.4g} ({figure.verdict})")
    return payload


if __name__ == "__main__":
    main()
