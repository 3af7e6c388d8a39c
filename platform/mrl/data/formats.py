"""Facts about data that every reader shares, and that need nothing else of ours: the error data problems
raise, Fashion-MNIST's IDX format and pixel statistics, the image suffixes read, the seeded train/validation
split, and the standardisation of uint8 pixels into the model's input.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Fashion-MNIST pixel statistics (train split), used to standardise inputs.
MEAN, STD = 0.2860, 0.3530
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


class DataError(FileNotFoundError):
    """Data is missing or malformed; the message names the path and how to get the data."""


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", raw[4: 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{root / stem}[.gz] not found: Fashion-MNIST is expected there; install it with "
        "`apt-get install -y dataset-fashion-mnist` (files go to /usr/share/datasets/fashion-mnist) "
        "or set data.path to a directory holding the four IDX files"
    )


def load_fashion_mnist(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST `split` from IDX files under `root`: images (N, 1, 28, 28) uint8, labels (N,) int64."""
    root = Path(root)
    images_file, labels_file = IDX_FILES[split]
    images = read_idx(find_idx(root, images_file))[:, None]  # (N, 1, 28, 28)
    labels = read_idx(find_idx(root, labels_file)).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} images but {len(labels)} labels in the {split} split")
    return images, labels


def train_val_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of range(n) into train and validation row indices."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) -> standardised float32, the model's input."""
    return ((images.astype(np.float32) / 255.0) - MEAN) / STD
