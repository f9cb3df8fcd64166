"""Shared fixtures: a small real recipe (glyphs -> MNIST at toy scale), and the synthetic class- and example-level
stores with known effects (and their estimates) that the analyses, their results and the report are checked on.

Test modules take these as fixtures and never import one another; the builders live in tests/synthetic.py.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from tests.synthetic import linear_margins, planted_example_data, synthetic_recipe, synthetic_store, write_rows

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "dmtoolkit" / "recipes"

SMALL_RECIPE = {
    "name": "small-test",
    "source": {"dataset": "glyphs", "max_per_class": 6, "test_size": 300},
    "target": {"dataset": "mnist5k", "train_size": 200, "test_size": 120},
    "subsets": {"kind": "class", "alpha": 0.5, "models": 8, "seed": 3},
    "model": {"arch": "tiny-cnn", "width": 8, "hidden": 16, "resolution": 16},
    "training": {"epochs": 1, "batch_size": 64, "lr": 0.05, "models_per_batch": 2},
    "transfer": {"epochs": 20},
    "planting": {"leaks": 4, "decoys": 4, "near_copies": 1, "flip_fraction": 0.02},
}


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture()
def small_recipe(tmp_path: Path) -> Path:
    return write_recipe(tmp_path / "small.yaml", SMALL_RECIPE)


@pytest.fixture(scope="module")
def class_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Class-level store (6 classes, 12 targets, 60 models) where class 1 helps targets 0-3 and class 4 hurts
    everything; its influence."""
    from dmtoolkit.estimate import compute_influence

    P, T, M = 6, 12, 60
    tmp = tmp_path_factory.mktemp("class")
    rng = np.random.default_rng(0)
    masks = rng.random((M, P)) < 0.5
    effect = np.zeros((P, T))
    effect[1, :4] = 2.0
    effect[4, :] = -1.0
    effect[2, 6:] = 0.5
    store = synthetic_store(tmp / "runs.h5", linear_margins(masks, effect, rng, noise=0.3), masks)
    predictions = np.tile(np.arange(T) % 3, (M, 1)).astype(np.int16)
    predictions[: M // 3, 5] = 2  # target 5: class 2 on a third of models, majority still 5 % 3 = 2
    predictions[:, 7] = -1  # unknown everywhere
    with h5py.File(store, "r+") as f:
        f["predictions"][...] = predictions
    infl = tmp / "influence.h5"
    compute_influence(store, infl, device="cpu", holdout_frac=0.0)
    return store, infl


@pytest.fixture(scope="module")
def example_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Example-level store with planted leaks (2 -> target 4, 7 -> target 1), a decoy and two flips."""
    from dmtoolkit.estimate import compute_influence, fit_datamodels
    from dmtoolkit.store import RunStore, create_store

    tmp = tmp_path_factory.mktemp("example")
    n, t, m = 12, 10, 120
    data = planted_example_data(n, t, leaks={2: 4, 7: 1}, decoys={5: 0}, flips=(3, 9), seed=1)
    store = create_store(tmp / "ex-runs.h5", synthetic_recipe(m, kind="example", seed=4), data)
    rng = np.random.default_rng(2)
    with RunStore(store) as run:
        masks = run.file["masks"][()]
    margins = rng.normal(0, 0.3, (m, t))
    margins[:, 4] += 3.0 * masks[:, 2]
    margins[:, 1] += 3.0 * masks[:, 7]
    margins -= 0.6 * masks[:, [3]] + 0.6 * masks[:, [9]]
    write_rows(store, margins)
    infl = tmp / "ex-influence.h5"
    compute_influence(store, infl, device="cpu", holdout_frac=0.0)
    dm = tmp / "ex-datamodels.h5"
    fit_datamodels(store, dm, device="cpu", targets=slice(0, 6), n_lambdas=10)
    return {"store": store, "influence": infl, "datamodels": dm, "masks": masks, "margins": margins}
