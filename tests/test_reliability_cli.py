"""`dmtoolkit reliability` and `reliability_report` on simulated class-level stores whose true effects are known:
margins = masks @ effects + noise, the masks drawn from the recipe's own mask seed by `create_store`."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dmtoolkit.cli import cli
from dmtoolkit.errors import UserError
from dmtoolkit.recipe import parse_recipe_dict
from dmtoolkit.reliability import (
    class_influence,
    class_target_matrix,
    defined_spearman,
    mean_influence,
    models_for_reliability,
    reliability_report,
    spearman_brown,
)
from dmtoolkit.store import RunStore, create_store

from .synthetic import synthetic_data

P, T = 16, 45


def true_effects(seed: int = 0) -> np.ndarray:
    """(P, T): a class effect shared by all targets, one per target class, and a little per target."""
    rng = np.random.default_rng(seed)
    labels = synthetic_data(P, T).target_test.labels
    return (rng.normal(0, 0.3, (P, 1)) + rng.normal(0, 0.3, (P, 3))[:, labels]
            + rng.normal(0, 0.05, (P, T))).astype(np.float32)


def simulated_store(path: Path, effects: np.ndarray, *, models: int = 160, mask_seed: int = 0,
                    training_seed: int = 0, noise: float = 1.0, kind: str = "class",
                    antithetic: bool = True) -> Path:
    """A store whose row i holds masks[i] @ effects plus noise (one part shared by all targets, one per target),
    drawn from both seeds so two stores with different seeds have independent noise."""
    recipe = parse_recipe_dict({
        "name": "simulated", "source": {"dataset": "synthetic"}, "target": {"dataset": "synthetic"},
        "subsets": {"kind": kind, "models": models, "seed": mask_seed, "antithetic": antithetic},
        "training": {"seed": training_seed},
    })
    data = synthetic_data(effects.shape[0], effects.shape[1], per_class=1 if kind == "example" else 2)
    create_store(path, recipe, data)
    rng = np.random.default_rng([mask_seed, training_seed, 7])
    with h5py.File(path, "r+") as f:  # test set-up: every row at once (write_row, one by one, is 20 ms a row)
        masks = f["masks"][()].astype(np.float32)
        units = effects if kind == "class" else np.resize(effects, (masks.shape[1], effects.shape[1]))
        shared, own = rng.normal(size=(models, 1)), rng.normal(size=(models, effects.shape[1]))
        f["margins"][...] = masks @ units + noise * (shared + own)
        f["seed"][...] = np.arange(models)
        f["completed"][...] = True
    return path


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])
