"""Turn a recipe's data section into the `RunData` a store holds: load, cap, plant, fingerprint.

Datasets come by name (`load_dataset`) or, when a DataSpec names `beton_train`/`beton_test`, from ffcv
betons (read whole here, so the store is self-contained as always; source training later re-reads the
subsets from the beton with ffcv's Loader, see `dmtoolkit.data.beton`).
"""

from __future__ import annotations

import numpy as np

from dmtoolkit.data import ImageDataset, load_dataset
from dmtoolkit.data.base import DataNote
from dmtoolkit.data.planting import plant
from dmtoolkit.errors import DataError
from dmtoolkit.recipe import DataSpec, Recipe
from dmtoolkit.store import Planted, RunData, Split


def select_classes(dataset: ImageDataset, names: list[str] | None, role: str) -> ImageDataset:
    """The examples of the named classes only, relabelled 0..len(names)-1 in the order given."""
    if names is None:
        return dataset
    unknown = [n for n in names if n not in dataset.class_names]
    if unknown or len(set(names)) != len(names):
        problem = f"unknown class(es) {', '.join(map(repr, unknown[:5]))}" if unknown else "repeated class names"
        raise DataError(f"{role}.classes: {problem} in {dataset.name}; list each class once, "
                        "see `dmtoolkit data list DATASET` for the names")
    old = [dataset.class_names.index(n) for n in names]
    relabel = np.full(len(dataset.class_names), -1, dtype=np.int64)
    relabel[old] = np.arange(len(names))
    keep = np.flatnonzero(relabel[dataset.labels] >= 0)
    return ImageDataset(dataset.name, dataset.images[keep], relabel[dataset.labels[keep]], tuple(names),
                        tuple(dataset.example_ids[i] for i in keep))


def _cap_per_class(dataset: ImageDataset, cap: int | None, seed: int) -> ImageDataset:
    if cap is None:
        return dataset
    rng = np.random.default_rng([seed, 1])
    keep = [rng.permutation(np.flatnonzero(dataset.labels == k))[:cap] for k in range(len(dataset.class_names))]
    return dataset.subset(np.sort(np.concatenate(keep)))


def _cap(dataset: ImageDataset, size: int | None, seed: int, salt: int) -> ImageDataset:
    if size is None or size >= len(dataset):
        return dataset
    return dataset.subset(np.sort(np.random.default_rng([seed, salt]).permutation(len(dataset))[:size]))


def _load(spec: DataSpec, role: str) -> tuple[ImageDataset, ImageDataset]:
    if spec.beton_train or spec.beton_test:  # read into the store; source training re-reads subsets via ffcv
        from dmtoolkit.data.beton import load_spec_from_betons

        train, test = load_spec_from_betons(spec, role)
    else:
        train, test = load_dataset(spec.dataset, "train"), load_dataset(spec.dataset, "test")
    train, test = select_classes(train, spec.classes, role), select_classes(test, spec.classes, role)
    if len(test) == 0:
        raise DataError(f"{role}: dataset {spec.dataset!r} has an empty test split")
    return train, test


SPLIT_CONSEQUENCE = {"source": "they are never trained on (they only measure source accuracy)",
                     "target": "margins are measured on it; the rest fits the transferred head"}


def conversion_notes(role: str, *datasets: ImageDataset) -> tuple[str, ...]:
    """The loaders' notes on `datasets` (a role's train and test splits), once each, as `role: ...` lines."""
    seen: list[DataNote] = []
    for dataset in datasets:
        seen += [note for note in dataset.notes if note not in seen]
    return tuple(f"{role}: {note.text}" + (f"; {SPLIT_CONSEQUENCE[role]}" if note.kind == "split" else "")
                 for note in seen)


def trainer_notes(recipe: Recipe, source: ImageDataset, target: ImageDataset) -> tuple[str, ...]:
    """What the built-in trainer will convert: target images to the source's channels (a user trainer does
    its own conversions and gets the arrays as stored)."""
    if recipe.trainer is not None:
        return ()
    c_source, c_target = source.images.shape[-1], target.images.shape[-1]
    if c_source == c_target:
        return ()
    how = "averaged to 1 channel (grayscale)" if c_source == 1 else "repeated to 3 channels (RGB)"
    return (f"target: its {c_target}-channel images are {how} when the built-in trainer transfers, because the "
            f"source has {c_source}",)


def _split(dataset: ImageDataset) -> Split:
    return Split(np.ascontiguousarray(dataset.images), dataset.labels.astype(np.int64))


def own_run_data(recipe: Recipe) -> RunData:
    """What the store holds for a trainer that brings its own data: unit names and target labels (from the
    recipe's `own_data`), no images (each split holds 1x1 blank placeholders; class level: no pool).

    Example level needs a pool row per unit, so the pool is P blank examples whose ids are the unit names.
    """
    import hashlib
    import json

    own = recipe.own_data
    assert own is not None
    units, labels = own.units, np.asarray(own.target_labels, np.int64)
    blank = lambda n: Split(np.zeros((n, 1, 1, 1), np.uint8), np.zeros(n, np.int64))  # noqa: E731
    by_class = recipe.subsets.kind == "class"
    fingerprint = hashlib.sha256(json.dumps(own.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    return RunData(
        source_pool=blank(0 if by_class else len(units)),
        source_test=blank(0),
        source_class_names=units if by_class else ("all",),
        source_example_ids=() if by_class else units,
        target_train=blank(0),
        target_test=Split(np.zeros((len(labels), 1, 1, 1), np.uint8), labels),
        target_class_names=own.classes,
        fingerprints={"own_data": fingerprint},
    )


def build_run_data(recipe: Recipe) -> RunData:
    """Load source and target as the recipe says, apply caps (seeded), plant ground truth if asked."""
    if recipe.own_data is not None:
        return own_run_data(recipe)
    src, tgt = recipe.source, recipe.target
    assert src is not None and tgt is not None  # the recipe validator requires them without own_data
    planting = recipe.planting
    if src.beton_train and planting.active:
        raise DataError("source: planting adds or relabels images a source beton does not hold; "
                        "set planting leaks, decoys and flip_fraction to 0 and leave out planting.harmful with "
                        "beton_train, or plant before writing the beton")
    source_train, source_test = _load(src, "source")
    target_train, target_test = _load(tgt, "target")
    pool = _cap(_cap_per_class(source_train, src.max_per_class, src.seed), src.train_size, src.seed, 2)
    source_test_used = _cap(source_test, src.test_size, src.seed, 3)
    target_train_used = _cap_per_class(_cap(target_train, tgt.train_size, tgt.seed, 2), tgt.max_per_class, tgt.seed)
    target_test_used = _cap(target_test, tgt.test_size, tgt.seed, 3)
    fingerprints = {
        "source_train": source_train.fingerprint, "source_test": source_test.fingerprint,
        "target_train": target_train.fingerprint, "target_test": target_test.fingerprint,
    }
    planted = None
    if planting.active:
        # conflict classes draw from the whole target train split (never test): the head's share is too small
        result = plant(pool, target_train_used, target_test_used, planting, harm_pool=target_train)
        pool = result.dataset
        planted = Planted(result.leak_target, result.decoy_target, result.near_copy, result.flipped,
                          result.original_labels, result.harm_kind, result.harm_from)
    fingerprints["source_pool"] = pool.fingerprint
    notes = (conversion_notes("source", source_train, source_test) + conversion_notes("target", target_train, target_test)
             + trainer_notes(recipe, source_train, target_test))
    return RunData(
        source_pool=_split(pool),
        source_test=_split(source_test_used),
        source_class_names=tuple(pool.class_names),
        source_example_ids=tuple(pool.example_ids),
        target_train=_split(target_train_used),
        target_test=_split(target_test_used),
        target_class_names=tuple(target_test.class_names),
        fingerprints=fingerprints,
        planted=planted,
        notes=notes,
    )


def _shape(split: Split) -> str:
    _, h, w, c = split.images.shape
    return f"{w}x{h} pixels, {c} channel{'s' if c > 1 else ''} ({'grayscale' if c == 1 else 'RGB'})"


def describe_run_data(recipe: Recipe, data: RunData) -> list[str]:
    """What `init` prints about the data: per role, the splits with their counts, classes, image shape."""
    classes = lambda names: f"{len(names):,} class{'es' if len(names) != 1 else ''}"  # noqa: E731
    if recipe.own_data is not None:
        units = len(data.source_class_names) if recipe.subsets.kind == "class" else len(data.source_example_ids)
        return [f"data: the trainer brings its own; {units:,} source units, {len(data.target_test.labels):,} target "
                f"test examples in {classes(data.target_class_names)} (recipe own_data)"]
    src, tgt = data.source_pool, data.target_test
    return [f"source: {len(src.labels):,} training images (the pool the subsets are drawn from) + "
            f"{len(data.source_test.labels):,} test images, {classes(data.source_class_names)}, {_shape(src)}",
            f"target: {len(data.target_train.labels):,} train + {len(tgt.labels):,} test images, "
            f"{classes(data.target_class_names)}, {_shape(tgt)}"]
