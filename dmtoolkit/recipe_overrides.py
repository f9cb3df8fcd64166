"""Recipe overrides by dotted key (`{"transfer.head": "ridge"}`), validated like any recipe."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dmtoolkit.errors import RecipeError
from dmtoolkit.recipe import Recipe, parse_recipe_dict


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
