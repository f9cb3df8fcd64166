"""Plant known ground truth into a source dataset, so leak and mislabel detectors can be scored.

Leaks are target *test* images copied into the source under the same-named source class (MNIST "3"
-> glyph "3"; or, with `copy_labels: by-index`, target class k -> source class k, for targets such as
fashion-mnist whose class names the source lacks); decoys are target *train* images copied the same way, so that looking like the target
does not by itself give a leak away. Some copies are near copies (1-px shift or light noise); decoys
get near copies in the same proportion as leaks for the same reason. Copies are appended in a
shuffled order after the original examples. Finally a fraction of the original source examples get
their label flipped to another random class; copies are never flipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from dmtoolkit.data.base import ImageDataset
from dmtoolkit.errors import DataError
from dmtoolkit.recipe import PlantingSpec

NOISE_SD = 12.0  # light noise for near copies, in grey levels


@dataclass(frozen=True, eq=False)
class PlantedSource:
    """The planted source pool and, per example, what was planted (-1 / False where nothing was)."""

    dataset: ImageDataset
    leak_target: np.ndarray  # int64 (N,): index into the target test set this example copies
    decoy_target: np.ndarray  # int64 (N,): index into the target train set this example copies
    near_copy: np.ndarray  # bool (N,): a leak or decoy that is a near copy
    flipped: np.ndarray  # bool (N,): label flipped
    original_labels: np.ndarray  # int64 (N,): label before flipping


def to_format(images: np.ndarray, height: int, width: int, channels: int) -> np.ndarray:
    """uint8 (N, h, w, c) images resized (bilinear) and converted to (N, height, width, channels)."""
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(images), height, width, channels), np.uint8)
    for k, image in enumerate(images):
        picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert(mode)
        if picture.size != (width, height):
            picture = picture.resize((width, height), Image.Resampling.BILINEAR)
        out[k] = np.asarray(picture).reshape(height, width, channels)
    return out


def _near_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image shifted by one pixel in a random direction (zero fill), or with light Gaussian noise."""
    if rng.random() < 0.5:
        dy, dx = [(0, 1), (0, -1), (1, 0), (-1, 0)][rng.integers(4)]
        shifted = np.roll(image, (dy, dx), axis=(0, 1))
        if dy:
            shifted[0 if dy > 0 else -1] = 0  # zero the row that wrapped around
        if dx:
            shifted[:, 0 if dx > 0 else -1] = 0
        return shifted
    return np.clip(image + rng.normal(0, NOISE_SD, image.shape), 0, 255).astype(np.uint8)


def _check(source: ImageDataset, target_train: ImageDataset, target_test: ImageDataset, config: PlantingSpec) -> None:
    """What the data must allow (the spec itself was validated when it was made: counts, ranges, near_copies)."""
    problems = [
        (config.leaks > len(target_test), f"leaks ({config.leaks}) exceed the {len(target_test)} target test images"),
        (
            config.decoys > len(target_train),
            f"decoys ({config.decoys}) exceed the {len(target_train)} target train images",
        ),
        (config.flip_fraction > 0 and len(source.class_names) < 2, "flipping labels needs at least two source classes"),
    ]
    for failed, message in problems:
        if failed:
            raise DataError(f"bad planting config: {message}")
    if (config.leaks or config.decoys) and config.copy_labels == "by-index":
        classes = max(len(target_train.class_names), len(target_test.class_names))
        if classes > len(source.class_names):
            raise DataError(f"copy_labels by-index needs at least as many source classes as target classes "
                            f"({len(source.class_names)} < {classes}); use a larger source")
    elif config.leaks or config.decoys:
        names = dict.fromkeys(target_train.class_names + target_test.class_names)
        unmatched = [c for c in names if c not in source.class_names]
        if unmatched:
            raise DataError(
                f"target classes {unmatched} have no same-named class in source {source.name}; "
                "plant copies only between datasets that share class names (e.g. digits '0'..'9'), or set "
                "planting.copy_labels: by-index"
            )


def plant(
    source: ImageDataset, target_train: ImageDataset, target_test: ImageDataset, config: PlantingSpec
) -> PlantedSource:
    """Copy target images into `source` and flip source labels as `config` (the recipe's `planting`
    section) says; deterministic in config.seed."""
    _check(source, target_train, target_test, config)
    rng = np.random.default_rng(config.seed)
    leaks = rng.choice(len(target_test), config.leaks, replace=False)
    decoys = rng.choice(len(target_train), config.decoys, replace=False)
    decoy_near = round(config.near_copies * config.decoys / config.leaks) if config.leaks else 0
    # One row per copy: (from test?, target index, near copy?), then shuffled into the appended block.
    rows = [(True, int(j), k < config.near_copies) for k, j in enumerate(leaks)]
    rows += [(False, int(j), k < decoy_near) for k, j in enumerate(decoys)]
    rows = [rows[k] for k in rng.permutation(len(rows))]

    _, height, width, channels = source.images.shape
    copies = np.empty((len(rows), height, width, channels), np.uint8)
    copy_labels = np.empty(len(rows), np.int64)
    for k, (from_test, j, near) in enumerate(rows):
        target = target_test if from_test else target_train
        copies[k] = to_format(target.images[j : j + 1], height, width, channels)[0]
        if near:
            copies[k] = _near_copy(copies[k], rng)
        label = int(target.labels[j])
        copy_labels[k] = label if config.copy_labels == "by-index" else source.class_names.index(
            target.class_names[label])

    n = len(source)
    original = np.concatenate([source.labels, copy_labels])
    labels = original.copy()
    flipped = np.zeros(len(labels), dtype=bool)
    flips = rng.choice(n, round(config.flip_fraction * n), replace=False)
    labels[flips] = (labels[flips] + rng.integers(1, len(source.class_names), len(flips))) % len(source.class_names)
    flipped[flips] = True

    dataset = ImageDataset(
        name=f"{source.name}+planted" if rows or len(flips) else source.name,
        images=np.concatenate([source.images, copies]),
        labels=labels,
        class_names=source.class_names,
        example_ids=source.example_ids + tuple(f"planted/{k}" for k in range(len(rows))),
    )
    pad = np.full(n, -1, np.int64)
    return PlantedSource(
        dataset=dataset,
        leak_target=np.concatenate([pad, [j if t else -1 for t, j, _ in rows]]).astype(np.int64),
        decoy_target=np.concatenate([pad, [-1 if t else j for t, j, _ in rows]]).astype(np.int64),
        near_copy=np.concatenate([np.zeros(n, bool), [near for _, _, near in rows]]).astype(bool),
        flipped=flipped,
        original_labels=original,
    )
