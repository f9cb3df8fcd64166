"""Small synthetic run stores for tests: real `create_store` files with chosen masks and margins."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from dmtoolkit.recipe import parse_recipe_dict
from dmtoolkit.store import RunData, RunStore, Split, create_store


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


def synthetic_store(path: Path, margins: np.ndarray, masks: np.ndarray | None = None, *,
                    kind: str = "class", alpha: float = 0.5, seed: int = 0,
                    completed: np.ndarray | None = None, models_per_batch: int = 8,
                    antithetic: bool = False) -> Path:
    """A run store whose rows hold `margins` (m, T); `masks` (m, P) replace the seeded ones if given."""
    m, T = margins.shape
    P = masks.shape[1] if masks is not None else 6
    per_class = 1 if kind == "example" else 2
    data = synthetic_data(P if kind == "class" else P, T, per_class=per_class, seed=seed)
    recipe = parse_recipe_dict({
        "name": "synthetic", "source": {"dataset": "synthetic"}, "target": {"dataset": "synthetic"},
        "subsets": {"kind": kind, "alpha": alpha, "models": m, "seed": seed, "antithetic": antithetic},
        "training": {"models_per_batch": models_per_batch},
    })
    create_store(path, recipe, data, force=True)
    if masks is not None:
        with h5py.File(path, "r+") as f:
            f["masks"][...] = masks
    done = np.ones(m, bool) if completed is None else completed
    with RunStore(path, writable=True) as store:
        for i in np.flatnonzero(done):
            store.write_row(int(i), margins[i], seed=int(i), source_accuracy=0.5, target_accuracy=0.5, seconds=0.1)
    return path


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
