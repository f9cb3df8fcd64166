"""Plant known ground truth into a source dataset, so leak and mislabel detectors can be scored.

Leaks are target *test* images copied into the source under the same-named source class (MNIST "3"
-> glyph "3"; or, with `copy_labels: by-index`, target class k -> source class k, for targets such as
fashion-mnist whose class names the source lacks); decoys are target *train* images copied the same way, so that looking like the target
does not by itself give a leak away. Some copies are near copies (1-px shift or light noise); decoys
get near copies in the same proportion as leaks for the same reason. Copies are appended in a
shuffled order after the original examples. Finally a fraction of the original source examples get
their label flipped to another random class; copies are never flipped.

Harmful classes (`planting.harmful`, issue 34) are planted last, with their own random stream (so adding them
leaves the leaks, decoys and flips of a seed as they were), one per listed kind, each on a distinct source
class:

- conflict: target TRAIN images (never test) of other target classes are added to the source class that
  stands for a target class c (same name, or index with `copy_labels: by-index`): with `conflict_classes: 1`
  a glyph "7" class that also holds MNIST 1s, so features that separate the source classes must merge target
  1s and 7s; by default images of every other target class, so they must merge all target-like images.
  Several conflict classes merge disjoint sets of target classes while there are enough of them;
- noise: every image of a source class gets Gaussian noise of `noise_sd` grey levels;
- shuffled: a source class's images are replaced by images drawn from the other classes, so its label
  means nothing;
- duplicate: a new source class (named after the one it copies, with a trailing "~") holds a copy of
  another class's images.

The store records per class the kind planted ("" for a clean class) and where it came from (`harm_from`:
conflict: the target class whose images were added, when one; duplicate: the source class copied; else -1).
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
    harm_kind: tuple[str, ...] | None = None  # per source class: the harm planted in it, "" for none
    harm_from: np.ndarray | None = None  # int64 (K,): conflict: target class added; duplicate: class copied; else -1


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
    source: ImageDataset, target_train: ImageDataset, target_test: ImageDataset, config: PlantingSpec,
    harm_pool: ImageDataset | None = None,
) -> PlantedSource:
    """Copy target images into `source`, flip source labels and plant harmful classes as `config` (the recipe's
    `planting` section) says; deterministic in config.seed. Conflict classes draw from `harm_pool` (target
    train images; default `target_train`), never from `target_test`."""
    _check(source, target_train, target_test, config)
    result = _plant_copies(source, target_train, target_test, config)
    if config.harmful is None:
        return result
    return plant_harm(result, harm_pool if harm_pool is not None else target_train, config)


def _plant_copies(
    source: ImageDataset, target_train: ImageDataset, target_test: ImageDataset, config: PlantingSpec
) -> PlantedSource:
    """Leaks, decoys and label flips (see the module docstring)."""
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


def _counterparts(source: ImageDataset, target: ImageDataset, copy_labels: str) -> dict[int, int]:
    """Target class index -> the source class index standing for it (same name, or same index with by-index)."""
    if copy_labels == "by-index":
        return {c: c for c in range(min(len(target.class_names), len(source.class_names)))}
    return {c: source.class_names.index(name) for c, name in enumerate(target.class_names)
            if name in source.class_names}


def plant_harm(planted: PlantedSource, target_train: ImageDataset, config: PlantingSpec) -> PlantedSource:
    """Plant `config.harmful`'s classes into an already planted source (see the module docstring); its own random
    stream (seed, 34), so the leaks, decoys and flips of `planted` are left as they were."""
    spec = config.harmful
    assert spec is not None
    source = planted.dataset
    rng = np.random.default_rng([config.seed, 34])
    K = len(source.class_names)
    counterparts = _counterparts(source, target_train, config.copy_labels)
    labels_present = set(np.unique(target_train.labels).tolist())
    original = (planted.leak_target < 0) & (planted.decoy_target < 0)  # leak and decoy copies stay as they are
    taken: set[int] = set()
    involved: set[int] = set()  # target classes an earlier conflict class merged

    def pick(candidates: list[int], what: str) -> int:
        free = [k for k in candidates if k not in taken]
        if not free:
            raise DataError(f"bad planting config: no source class left for a planted {what} class "
                            f"({len(spec.kinds)} harmful classes in {K} source classes)")
        choice = int(free[rng.integers(len(free))])
        taken.add(choice)
        return choice

    _, height, width, channels = source.images.shape
    images, labels = source.images.copy(), source.labels.copy()
    ids = list(source.example_ids)
    names = list(source.class_names)
    kinds = [""] * K
    origin = [-1] * K
    added_images, added_labels, added_ids = [], [], []
    for number, kind in enumerate(spec.kinds):
        if kind == "conflict":
            usable = [c for c in counterparts if c in labels_present]
            if len(usable) < 2:
                raise DataError("bad planting config: a conflict class needs two target classes with a source "
                                "counterpart (same-named classes, or copy_labels: by-index)")
            # target classes no earlier conflict class involves come first, so conflicts merge disjoint sets
            fresh = [c for c in usable if c not in involved and counterparts[c] not in taken] or usable
            victim = pick([counterparts[c] for c in fresh], kind)
            own = next(c for c in usable if counterparts[c] == victim)
            others = [c for c in usable if c != own]
            count = len(others) if spec.conflict_classes is None else min(spec.conflict_classes, len(others))
            unused = [c for c in others if c not in involved]
            sources = [int(c) for c in rng.choice(unused, min(count, len(unused)), replace=False)] if unused else []
            if len(sources) < count:
                rest = [c for c in others if c not in sources]
                sources += [int(c) for c in rng.choice(rest, count - len(sources), replace=False)]
            sources.sort()
            involved.update([own, *sources])
            shares = [spec.images // count + (i < spec.images % count) for i in range(count)]
            chosen = np.concatenate([rng.choice(pool, min(share, len(pool)), replace=False) for c, share
                                     in zip(sources, shares) if len(pool := np.flatnonzero(target_train.labels == c))])
            chosen = np.sort(chosen.astype(np.int64))
            added_images.append(to_format(target_train.images[chosen], height, width, channels))
            added_labels.append(np.full(len(chosen), victim, np.int64))
            added_ids += [f"planted/conflict/{number}/{int(j)}" for j in chosen]
            added = sources[0] if count == 1 else -1
            kinds[victim], origin[victim] = kind, added
        elif kind in ("noise", "shuffled"):
            victim = pick(list(range(K)), kind)
            rows = np.flatnonzero((labels == victim) & original)
            if kind == "noise":
                noisy = images[rows].astype(np.float64) + rng.normal(0, spec.noise_sd, images[rows].shape)
                images[rows] = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
            else:
                others = np.flatnonzero((labels != victim) & original)
                images[rows] = source.images[rng.choice(others, len(rows), replace=len(others) < len(rows))]
            for i in rows:
                ids[i] = f"planted/{kind}/{ids[i]}"
            kinds[victim] = kind
        else:  # duplicate
            copied = pick(list(range(K)), kind)  # stays clean, and is not chosen again
            rows = np.flatnonzero((labels[: len(source)] == copied) & original)
            new = len(names)
            name = f"{names[copied]}~"
            while name in names:
                name += "~"
            names.append(name)
            kinds.append(kind)
            origin.append(copied)
            taken.add(new)
            added_images.append(images[rows].copy())
            added_labels.append(np.full(len(rows), new, np.int64))
            added_ids += [f"planted/duplicate/{number}/{ids[i]}" for i in rows]
    n_added = sum(len(a) for a in added_labels)
    if n_added:
        images = np.concatenate([images, *added_images])
        labels = np.concatenate([labels, *added_labels])
    dataset = ImageDataset(name=source.name if source.name.endswith("+planted") else f"{source.name}+planted",
                           images=images, labels=labels, class_names=tuple(names),
                           example_ids=tuple(ids) + tuple(added_ids))
    extend = lambda a, fill: np.concatenate([a, np.full(n_added, fill, a.dtype)])  # noqa: E731
    return PlantedSource(
        dataset=dataset, leak_target=extend(planted.leak_target, -1), decoy_target=extend(planted.decoy_target, -1),
        near_copy=extend(planted.near_copy, False), flipped=extend(planted.flipped, False),
        original_labels=np.concatenate([planted.original_labels, labels[len(source):]]).astype(np.int64),
        harm_kind=tuple(kinds), harm_from=np.array(origin, np.int64))
