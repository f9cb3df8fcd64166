"""Dotted-key recipe overrides: set any key, validated as a whole, hashing like an edited recipe file."""

from __future__ import annotations

import pytest

from dmtoolkit.errors import RecipeError
from dmtoolkit.recipe import load_recipe, parse_recipe_dict
from dmtoolkit.recipe_overrides import apply_overrides

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
