"""Dotted-key recipe overrides: set any key, validated as a whole, hashing like an edited recipe file."""

from __future__ import annotations

import pytest

from dmtoolkit.errors import RecipeError
from dmtoolkit.recipe import load_recipe, parse_recipe_dict
from dmtoolkit.recipe_overrides import apply_overrides, recipe_with

from .conftest import RECIPES


def test_overrides_set_keys_and_hash_like_the_edited_recipe() -> None:
    base = load_recipe(RECIPES / "glyphs-to-mnist.yaml")
    changed = apply_overrides(base, {"transfer.head": "logistic", "training.epochs": 1, "source.classes": None})
    assert changed.transfer.head == "logistic" and changed.training.epochs == 1 and changed.source.classes is None
    data = base.model_dump(mode="json")
    data["transfer"]["head"], data["training"]["epochs"], data["source"]["classes"] = "logistic", 1, None
    assert changed.hash() == parse_recipe_dict(data).hash()
    assert apply_overrides(base, {}).hash() == base.hash()
    assert base.transfer.head == "ridge"  # the original is unchanged


@pytest.mark.parametrize(("overrides", "message"), [
    ({"trainer.epochs": 1}, "'trainer' is not a recipe section"),
    ({"training.epochz": 1}, "training.epochz: unknown key"),
    ({"epochs": 1}, "dotted key"),
    ({"subsets.alpha": 0.2, "subsets.antithetic": True, "subsets.design": "random"}, "antithetic needs alpha = 0.5"),
    ({"subsets.alpha": 0.2}, "design orthogonal needs alpha = 0.5"),  # the shipped recipe is orthogonal
    ({"training.epochs": -1}, "training.epochs"),
])
def test_bad_overrides_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        apply_overrides(load_recipe(RECIPES / "glyphs-to-mnist.yaml"), overrides, origin="lever")


def test_recipe_with_loads_overrides_then_sets_models_and_training_seed() -> None:
    base = load_recipe(RECIPES / "glyphs-to-mnist.yaml")
    made = recipe_with("glyphs-to-mnist", {"transfer.head": "logistic"}, origin="study", models=24, training_seed=5)
    data = base.model_dump(mode="json")
    data["transfer"]["head"], data["subsets"]["models"], data["training"]["seed"] = "logistic", 24, 5
    assert made.hash() == parse_recipe_dict(data).hash()
    # a Recipe or a path gives the same; with nothing to change it is the recipe itself
    assert recipe_with(base, {"transfer.head": "logistic"}, models=24, training_seed=5).hash() == made.hash()
    assert recipe_with(RECIPES / "glyphs-to-mnist.yaml").hash() == base.hash()
    assert recipe_with(base, models=base.subsets.models).hash() == base.hash()


def test_recipe_with_names_its_origin_in_errors() -> None:
    with pytest.raises(RecipeError, match=r"^removal study fashion: training.epochz: unknown key"):
        recipe_with(RECIPES / "glyphs-to-mnist.yaml", {"training.epochz": 1}, origin="removal study fashion")
