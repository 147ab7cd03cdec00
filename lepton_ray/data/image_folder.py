"""`data.name: imagefolder`: your own images as `root/<class>/<image>` trees, decoded once into memory.

Why decode once: a file-backed set decodes every image again each epoch (measured 2.35x slower per
epoch than in-memory tensors on Fashion-MNIST); decoded here once, in the driver, the splits are the
same in-memory tensors as every other data set, shipped once to the trials through Ray's object store.

Splits: `data.options.test_root` and `val_root` are trees of their own (the same class folders as
`data.root`); what is not given is carved from `data.root` (seeded, stratified). Channels (1 when every
image is grey, else 3) and size (when every image has the same) come from the images unless
`data.options.channels` / `image_size` are set. Pixels are scaled by the training split's per-channel
mean/std, as for every set; class order is the sorted folder names, recorded in every saved model.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from lepton_ray.config import DataConfig
from lepton_ray.data.contract import DataContract
from lepton_ray.data.splits import DataSplits, given_splits
from lepton_ray.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
OPTIONS = {"image_size": None, "channels": None, "test_root": None, "val_root": None}


def class_files(root: Path, field: str) -> dict[str, list[Path]]:
    """Class folder name -> its image files, both sorted (the class order is the folder names')."""
    if not root.is_dir():
        raise DataError(f"{field}: folder {str(root)!r} not found; point it at a root/<class>/<image> tree")
    tree = {folder.name: sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            for folder in sorted(root.iterdir()) if folder.is_dir()}
    if not tree or not any(tree.values()):
        raise DataError(f"{field}: no images under {str(root)!r}; expected root/<class>/<image> with one folder per class")
    empty = [name for name, files in tree.items() if not files]
    if empty:
        raise DataError(f"{field}: class folder {empty[0]!r} under {str(root)!r} holds no images; remove it or add its images")
    return tree


@contextmanager
def opened(path: Path, field: str) -> Iterator[Any]:
    """The image at `path` (PIL), or a one-line `DataError` naming the field when it is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            yield image
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{field}: {str(path)!r} is not a readable image ({type(err).__name__}); remove or replace it") from None


def _headers(files: list[Path], field: str) -> list[tuple[str, tuple[int, int]]]:
    """(mode, (width, height)) of each image, read from its header only."""
    out = []
    for path in files:
        with opened(path, field) as image:
            out.append((image.mode, image.size))
    return out


def input_shape(files: list[Path], channels: int | None, image_size: int | None, field: str) -> tuple[int, int, int]:
    """(channels, height, width): as set, else from the images (grey or colour; their one common size)."""
    headers = _headers(files, field)
    if channels is None:
        channels = 1 if all(mode in GREY_MODES for mode, _ in headers) else 3
    if image_size is not None:
        return channels, image_size, image_size
    sizes = sorted({size for _, size in headers})
    if len(sizes) > 1:
        shown = " and ".join(f"{w}x{h}" for w, h in sizes[:2])
        raise DataError(f"data.options.image_size: the images under {field} have {len(sizes)} sizes (e.g. {shown}); set data.options.image_size to resize them all to one")
    (width, height), = sizes
    return channels, height, width


def decode(files: list[Path], shape: tuple[int, int, int], field: str) -> torch.Tensor:
    """Every image as uint8 (N, C, H, W): converted to RGB, resized (bilinear) when its size differs, then to grey for 1 channel."""
    from PIL import Image

    channels, height, width = shape
    out = np.empty((len(files), channels, height, width), dtype=np.uint8)
    for index, path in enumerate(files):
        with opened(path, field) as image:
            image = image.convert("RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.BILINEAR)
            if channels == 1:
                image = image.convert("L")
            pixels = np.asarray(image)
        out[index] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return torch.from_numpy(out)


def read_tree(root: Path, classes: list[str], shape: tuple[int, int, int], field: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A tree's images in [0, 1] and their labels, by `classes` order; its class folders must be exactly those."""
    tree = class_files(root, field)
    if list(tree) != classes:
        raise DataError(f"{field}: class folders {list(tree)} differ from data.root's {classes}; give it the same class folders")
    files = [path for name in classes for path in tree[name]]
    labels = torch.tensor([label for label, name in enumerate(classes) for _ in tree[name]], dtype=torch.long)
    return decode(files, shape, field).float() / 255, labels


def image_folder(cfg: DataConfig, opts: dict) -> DataSplits:
    root = Path(cfg.root) if cfg.root is not None else None
    if root is None:
        raise DataError("data.root: not set for 'imagefolder'; point it at a root/<class>/<image> tree")
    tree = class_files(root, "data.root")
    classes = list(tree)
    shape = input_shape([path for files in tree.values() for path in files],
                        None if opts["channels"] is None else int(opts["channels"]), None if opts["image_size"] is None else int(opts["image_size"]), "data.root")
    train = read_tree(root, classes, shape, "data.root")
    given = {name: read_tree(Path(opts[f"{name}_root"]), classes, shape, f"data.options.{name}_root") for name in ("val", "test") if opts[f"{name}_root"]}
    colour = "grey" if shape[0] == 1 else "RGB"
    contract = DataContract.unnormalised(
        "imagefolder", shape, classes, f"an image file, converted to RGB, resized to {shape[2]}x{shape[1]} (bilinear) where it differs"
        f"{', then to grey' if shape[0] == 1 else ''} ({colour}), pixel values 0-255", (0, 255), 1 / 255,
    )
    return given_splits(*train, given.get("val"), given.get("test"), cfg, contract)
