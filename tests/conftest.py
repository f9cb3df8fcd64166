"""Shared fixtures: a small real recipe (glyphs -> MNIST at toy scale) and its initialised store."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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
