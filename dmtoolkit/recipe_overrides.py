"""Recipe overrides by dotted key (`{"transfer.head": "ridge"}`), validated like any recipe.

`recipe_with` is the one way the demo and the benchmarks build a variant of a recipe: load it (a `Recipe`, a
file, or a shipped recipe's name), set dotted keys, then the number of models and the training seed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dmtoolkit.errors import RecipeError
from dmtoolkit.recipe import Recipe, load_recipe, parse_recipe_dict


def apply_overrides(recipe: Recipe, overrides: Mapping[str, Any], *, origin: str = "recipe overrides") -> Recipe:
    """The recipe with each `"section.key": value` set (any depth), then validated as a whole, so the result
    hashes exactly like a recipe file with those values. Unknown keys are refused with the key's name."""
    data = json.loads(recipe.canonical_json())  # what the recipe says (a trainer recipe has no built-in sections)
    for dotted, value in overrides.items():
        *path, key = dotted.split(".")
        node = data
        for depth, part in enumerate(path):
            if not isinstance(node.get(part), dict):
                where = ".".join(path[: depth + 1])
                raise RecipeError(f"{origin}: {dotted}: {where!r} is not a recipe section "
                                  f"(sections: {', '.join(k for k, v in data.items() if isinstance(v, dict))})")
            node = node[part]
        if not path or not key:
            raise RecipeError(f"{origin}: {dotted!r}: give a dotted key such as 'training.epochs'")
        node[key] = value
    return parse_recipe_dict(data, origin=origin)


def recipe_with(recipe: Recipe | str | Path, overrides: Mapping[str, Any] | None = None, *,
                origin: str = "recipe overrides", models: int | None = None,
                training_seed: int | None = None) -> Recipe:
    """`recipe` (a `Recipe`, or a path / shipped name that `load_recipe` reads) with `overrides` applied by
    `apply_overrides` (errors name `origin`), then `models` and `training_seed` as `Recipe.with_overrides`
    sets them (`dmtoolkit init --models`, a trainer recipe's own seed)."""
    base = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    result = apply_overrides(base, overrides or {}, origin=origin)
    if models is None and training_seed is None:
        return result
    return result.with_overrides(models=models, training_seed=training_seed)
