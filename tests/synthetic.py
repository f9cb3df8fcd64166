"""Small synthetic run stores for tests: real `create_store` files with chosen masks and margins.

The one home of the tests' store builders: `synthetic_data` (random tiny images), `planted_example_data` (with
planted leaks, decoys and flipped labels), `synthetic_recipe`, `linear_margins` (masks @ effects + noise),
`write_rows` (rows into a created store), `synthetic_store` (all of it at once) and `trained_example_store`
(a tiny example-level store really trained, through the library's `ensure_trained`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path

import h5py
import numpy as np

from dmtoolkit.recipe import Recipe, parse_recipe_dict
from dmtoolkit.store import Planted, RunData, RunStore, Split, create_store


def synthetic_data(num_classes: int, num_targets: int, per_class: int = 2, seed: int = 0) -> RunData:
    """Random tiny images: `num_classes` source classes, `num_targets` target test examples."""
    rng = np.random.default_rng(seed)
    n = num_classes * per_class
    labels = np.repeat(np.arange(num_classes), per_class).astype(np.int64)
    split = lambda count, classes: Split(  # noqa: E731
        rng.integers(0, 256, (count, 8, 8, 1), dtype=np.uint8), rng.integers(0, classes, count).astype(np.int64)
    )
    return RunData(
        source_pool=Split(rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), labels),
        source_test=split(n, num_classes),
        source_class_names=tuple(f"c{k}" for k in range(num_classes)),
        source_example_ids=tuple(f"ex{i}" for i in range(n)),
        target_train=split(10, 3),
        target_test=split(num_targets, 3),
        target_class_names=("t0", "t1", "t2"),
        fingerprints={"source": "synthetic", "target": "synthetic"},
    )


def planted_example_data(num_examples: int, num_targets: int, *, leaks: Mapping[int, int],
                         decoys: Mapping[int, int] | None = None, flips: Iterable[int] = (), seed: int = 1) -> RunData:
    """`synthetic_data` with one example per class, where source `s` of `leaks` {s: t} is a copy of target test
    image t, source `d` of `decoys` {d: i} a copy of target *train* image i, and `flips` have flipped labels;
    recorded as the store's planted truth (`Planted`)."""
    data = synthetic_data(num_examples, num_targets, per_class=1, seed=seed)
    images = data.source_pool.images.copy()
    leak, decoy, flipped = np.full(num_examples, -1), np.full(num_examples, -1), np.zeros(num_examples, bool)
    for source, target in leaks.items():
        leak[source] = target
        images[source] = data.target_test.images[target]
    for source, image in (decoys or {}).items():
        decoy[source] = image
        images[source] = data.target_train.images[image]
    flipped[list(flips)] = True
    planted = Planted(leak, decoy, np.zeros(num_examples, bool), flipped, data.source_pool.labels.copy())
    return dataclasses.replace(data, source_pool=dataclasses.replace(data.source_pool, images=images), planted=planted)


def synthetic_recipe(models: int, *, kind: str = "class", alpha: float = 0.5, seed: int = 0,
                     antithetic: bool = False, models_per_batch: int = 8) -> Recipe:
    """The recipe of a synthetic store (synthetic source and target; nothing is ever trained from it)."""
    return parse_recipe_dict({
        "name": "synthetic", "source": {"dataset": "synthetic"}, "target": {"dataset": "synthetic"},
        "subsets": {"kind": kind, "alpha": alpha, "models": models, "seed": seed, "antithetic": antithetic},
        "training": {"models_per_batch": models_per_batch},
    })


def linear_margins(masks: np.ndarray, effects: np.ndarray, rng: np.random.Generator, noise: float,
                   offset: np.ndarray | float | None = None) -> np.ndarray:
    """float32 margins `masks @ effects (+ offset) + N(0, noise)` (one draw per model and target from `rng`)."""
    linear = masks @ effects if offset is None else masks @ effects + offset
    return (linear + rng.normal(0, noise, (len(masks), effects.shape[1]))).astype(np.float32)


def write_rows(path: Path, margins: np.ndarray, rows: Iterable[int] | None = None, *,
               source_accuracy: float | np.ndarray = 0.5) -> Path:
    """Write row i of `margins` (m, T) for each of `rows` (all by default) through `RunStore.write_row`, with seed
    i, target accuracy 0.5, 0.1 s and `source_accuracy` (one value, or one per row)."""
    accuracy = np.broadcast_to(np.asarray(source_accuracy, np.float64), (len(margins),))
    with RunStore(path, writable=True) as store:
        for i in range(len(margins)) if rows is None else rows:
            store.write_row(int(i), margins[i], seed=int(i), source_accuracy=float(accuracy[i]),
                            target_accuracy=0.5, seconds=0.1)
    return path


def synthetic_store(path: Path, margins: np.ndarray, masks: np.ndarray | None = None, *,
                    kind: str = "class", alpha: float = 0.5, seed: int = 0,
                    completed: np.ndarray | None = None, models_per_batch: int = 8,
                    antithetic: bool = False, masks_origin: str | None = None) -> Path:
    """A run store whose rows hold `margins` (m, T); `masks` (m, P) replace the seeded ones if given (recorded
    as `masks_origin`, e.g. "explicit" so that their design is detected, if given)."""
    m, T = margins.shape
    P = masks.shape[1] if masks is not None else 6
    per_class = 1 if kind == "example" else 2
    data = synthetic_data(P if kind == "class" else P, T, per_class=per_class, seed=seed)
    recipe = synthetic_recipe(m, kind=kind, alpha=alpha, seed=seed, antithetic=antithetic,
                              models_per_batch=models_per_batch)
    create_store(path, recipe, data, force=True)
    if masks is not None:
        with h5py.File(path, "r+") as f:
            f["masks"][...] = masks
            if masks_origin is not None:
                f.attrs["masks_origin"] = masks_origin
    done = np.ones(m, bool) if completed is None else completed
    return write_rows(path, margins, np.flatnonzero(done))


def linear_runs(m: int, P: int, T: int, effect_sd: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(masks, margins) of m models over P units without a store: random half masks, one effect per unit shared by
    all T targets, unit-variance noise (float32, as a store holds them)."""
    rng = np.random.default_rng(seed)
    masks = rng.random((m, P)) < 0.5
    effects = rng.normal(0, effect_sd, size=P)
    margins = (masks @ effects)[:, None] + rng.normal(size=(m, T))
    return masks.astype(np.float32), margins.astype(np.float32)


def difference_of_means_reference(masks: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """Plain NumPy reference: per unit, mean margin with it minus mean margin without it."""
    m = masks.astype(bool)
    return np.stack([margins[m[:, k]].mean(0) - margins[~m[:, k]].mean(0) for k in range(m.shape[1])])


def trained_example_store(path: Path, models: int = 12) -> Path:
    """A tiny example-level store (18 pool images, 16 targets, antithetic, groups of 4) really trained, for the
    tests that retrain or differentiate its networks."""
    from dmtoolkit.run.api import ensure_trained  # (torch: only where a store is trained)

    recipe = parse_recipe_dict({
        "name": "tiny-examples", "source": {"dataset": "synthetic"}, "target": {"dataset": "synthetic"},
        "subsets": {"kind": "example", "alpha": 0.5, "models": models, "seed": 1, "antithetic": True},
        "model": {"width": 2, "hidden": 4, "resolution": 8},
        "training": {"epochs": 2, "batch_size": 4, "lr": 0.05, "models_per_batch": 4, "randomness": "shared"},
        "transfer": {"head": "ridge", "ridge": 1.0},
    })
    data = synthetic_data(3, 16, per_class=6, seed=5)
    return ensure_trained(path, recipe, workers=1, device="cpu", progress=False, data=data).path
