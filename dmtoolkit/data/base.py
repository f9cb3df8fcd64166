"""One interface for every image dataset: `ImageDataset`, a registry of loaders, `load_dataset`.

Built-in datasets register themselves here (see the sibling modules); a spec is a registry name,
optionally followed by `:ARGUMENT` (e.g. `imagefolder:/data/pets`), or several specs joined by `+`
(`glyphs+fashion-mnist`): one dataset of all their images, for a source pool with other real images as
distractors (`combine_datasets`).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from dmtoolkit.errors import DataError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DataNote:
    """Something a loader did to the data that the user did not ask for, said in one line for `init` to warn.

    kind: "resize" (images of other sizes resized), "channels" (images converted to another number of
    channels), "split" (a test split held out of a folder that has none); text: what, how many, from what to what.
    """

    kind: str
    text: str


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images with integer labels, class names and stable per-example ids.

    `images` is uint8 (N, H, W, C) with C = 1 or 3; the built-ins draw a bright foreground on a dark
    background (MNIST convention). `labels` is int64 (N,) indexing `class_names`. `notes`: the conversions
    the loader made (`DataNote`), which `dmtoolkit init` prints as warnings; the data layer prints nothing.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    example_ids: tuple[str, ...]
    notes: tuple[DataNote, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[3] not in (1, 3):
            raise ValueError(
                f"{self.name}: images must be uint8 (N, H, W, 1|3), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.dtype != np.int64 or self.labels.shape != (n,):
            raise ValueError(
                f"{self.name}: labels must be int64 of shape ({n},), got {self.labels.dtype} {self.labels.shape}"
            )
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"{self.name}: labels outside [0, {len(self.class_names)})")
        if len(self.example_ids) != n or len(set(self.example_ids)) != n:
            raise ValueError(f"{self.name}: need {n} unique example ids, got {len(set(self.example_ids))}")

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over shape, pixels, labels and class names: equal content gives an equal hash in any process."""
        h = hashlib.sha256()
        h.update(repr(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(self.labels.astype("<i8").tobytes())
        h.update("\x1f".join(self.class_names).encode())
        return h.hexdigest()

    def subset(self, indices: np.ndarray | list[int]) -> ImageDataset:
        """The examples at `indices` (integer positions or a boolean mask), same name and classes."""
        idx = np.arange(len(self))[np.asarray(indices)]
        return ImageDataset(
            name=self.name,
            images=self.images[idx],
            labels=self.labels[idx],
            class_names=self.class_names,
            example_ids=tuple(self.example_ids[i] for i in idx),
            notes=self.notes,
        )


@dataclass(frozen=True)
class DatasetSource:
    """A registered dataset: `load(argument, split)`; `prepare(force)` builds its on-disk cache if it has one."""

    name: str
    load: Callable[[str, str], ImageDataset]
    takes_argument: bool = False
    prepare: Callable[[bool], Path] | None = None

    @property
    def usage(self) -> str:
        """How a spec names this dataset: `glyphs`, or `imagefolder:PATH` for one that takes an argument."""
        return f"{self.name}:PATH" if self.takes_argument else self.name


_REGISTRY: dict[str, DatasetSource] = {}


def register(source: DatasetSource) -> DatasetSource:
    """Add a dataset to the registry under `source.name`."""
    _REGISTRY[source.name] = source
    return source


def available_datasets() -> list[str]:
    """Registered datasets as they are written in a spec, sorted: `glyphs`, ..., `imagefolder:PATH`."""
    return sorted(source.usage for source in _REGISTRY.values())


COMBINE = "+"


def dataset_parts(spec: str) -> list[str]:
    """The specs a `+`-joined spec names, in order (one for a plain spec).

    A spec whose name takes an argument keeps its `+` (a folder path may contain one), so a folder goes last:
    `glyphs+imagefolder:/data/a+b` is glyphs and the folder `/data/a+b`.
    """
    parts: list[str] = []
    rest = spec
    while COMBINE in rest:
        name = rest.partition(":")[0]
        source = _REGISTRY.get(name)
        if source is not None and source.takes_argument:
            break
        head, _, rest = rest.partition(COMBINE)
        parts.append(head)
    parts.append(rest)
    return parts


def load_dataset(spec: str, split: str) -> ImageDataset:
    """Load split "train" or "test" of the dataset named by `spec` (`name`, `name:ARGUMENT`, or `A+B+…`)."""
    parts = dataset_parts(spec)
    if len(parts) > 1:
        if any(not part for part in parts):
            raise DataError(f"dataset {spec!r} has an empty part; join dataset names with one '+', e.g. "
                            "glyphs+fashion-mnist")
        if len(set(parts)) < len(parts):
            raise DataError(f"dataset {spec!r} names a dataset twice; name each once")
        return combine_datasets(spec, [_load_one(part, split) for part in parts])
    return _load_one(spec, split)


def _load_one(spec: str, split: str) -> ImageDataset:
    name, _, argument = spec.partition(":")
    source = _REGISTRY.get(name)
    if source is None:
        raise DataError(f"unknown dataset {spec!r}; use one of: {', '.join(available_datasets())}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {spec!r}; use 'train' or 'test'")
    if source.takes_argument and not argument:
        raise DataError(f"dataset {name!r} needs an argument; write it as {source.usage}")
    if argument and not source.takes_argument:
        raise DataError(f"dataset {name!r} takes no argument; write it as {name!r}")
    return source.load(argument, split)


def combine_datasets(name: str, parts: list[ImageDataset]) -> ImageDataset:
    """One dataset of every part's images, in order: the first part's classes keep their names, later parts'
    classes are named `PART:CLASS` (so "0" of glyphs and a later part's "0" stay two classes).

    Images smaller than the largest are padded with dark pixels to its size, centred (the built-ins draw a
    bright foreground on a dark background, so padding adds background); grayscale parts become RGB when
    another part is in colour. Both conversions are noted (`DataNote`) for `init` to print.
    """
    height = max(p.images.shape[1] for p in parts)
    width = max(p.images.shape[2] for p in parts)
    channels = max(p.images.shape[3] for p in parts)
    images, labels, class_names, example_ids, notes = [], [], [], [], []
    for position, part in enumerate(parts):
        part_name = part.name.partition(":")[0]
        x = part.images
        h, w = x.shape[1], x.shape[2]
        if (h, w) != (height, width):
            top, left = (height - h) // 2, (width - w) // 2
            x = np.pad(x, ((0, 0), (top, height - h - top), (left, width - w - left), (0, 0)))
            notes.append(DataNote("resize", f"{part_name} images ({h}×{w}) padded with dark pixels to "
                                            f"{height}×{width} (centred) to join {parts[0].name.partition(':')[0]}"))
        if x.shape[3] != channels:
            x = np.repeat(x, channels, axis=3)
            notes.append(DataNote("channels", f"grayscale {part_name} images converted to RGB ({channels} "
                                              "channels) to join a dataset in colour"))
        images.append(x)
        labels.append(part.labels + len(class_names))
        class_names += [c if position == 0 else f"{part_name}:{c}" for c in part.class_names]
        example_ids += part.example_ids
        notes += [n for n in part.notes if n not in notes]
    if len(set(class_names)) < len(class_names):
        raise DataError(f"dataset {name!r}: two parts give the same class name; combine different datasets")
    if len(set(example_ids)) < len(example_ids):
        raise DataError(f"dataset {name!r}: two parts share example ids; combine different datasets")
    split = parts[0].name.rpartition(":")[2]
    return ImageDataset(name=f"{name}:{split}", images=np.concatenate(images), labels=np.concatenate(labels),
                        class_names=tuple(class_names), example_ids=tuple(example_ids), notes=tuple(notes))


def cache_dir() -> Path:
    """Where prepared datasets live: `$DMTOOLKIT_CACHE`, else `~/.cache/dmtoolkit`."""
    return Path(os.environ.get("DMTOOLKIT_CACHE") or Path.home() / ".cache" / "dmtoolkit")


def prepare_all(force: bool = False) -> list[Path]:
    """Build the cache of every built-in dataset that needs one (render glyphs, ...); returns the cache files."""
    paths = []
    for name, source in sorted(_REGISTRY.items()):
        if source.prepare is not None:
            print(f"preparing {name}", file=sys.stderr)
            paths.append(source.prepare(force))
    return paths


def stratified_test_mask(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask taking round(test_fraction * n_c) random examples of every class c (seeded)."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        is_test[rng.choice(members, round(test_fraction * len(members)), replace=False)] = True
    return is_test
