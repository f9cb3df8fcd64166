"""`dmtoolkit demo`: the default recipe end to end on built-in data, sized for minutes on a laptop CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dmtoolkit.errors import UserError
from dmtoolkit.recipe import load_recipe
from dmtoolkit.run.driver import train_store
from dmtoolkit.run.executors import make_executor
from dmtoolkit.run.prepare import build_run_data
from dmtoolkit.store import RunStore, create_store
from dmtoolkit.store_checks import store_summary

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
DEMO_MODELS = 256
QUICK_MODELS = 16


def _ensure_store(path: Path, recipe_path: Path, models: int) -> None:
    """Create the demo store, or keep an existing one made from the same recipe (so reruns resume)."""
    recipe = load_recipe(recipe_path).with_overrides(models=models)
    if path.exists():
        with RunStore(path) as existing:
            if existing.recipe_hash == recipe.hash():
                return
        raise UserError(f"{path}: exists but was made from another recipe or scale; "
                        "remove it or pass another --out")
    click.echo(f"creating {path} ({models} models)", err=True)
    create_store(path, recipe, build_run_data(recipe))


def run_demo(out: Path, *, quick: bool = False, workers: int = 2, device: str | None = None) -> dict[str, Any]:
    """Init (or resume) and train the default class-level recipe; returns the store summary."""
    out.mkdir(parents=True, exist_ok=True)
    store = out / ("quick-runs.h5" if quick else "runs.h5")
    _ensure_store(store, RECIPES / "glyphs-to-mnist.yaml", QUICK_MODELS if quick else DEMO_MODELS)
    train_store(store, make_executor("local", workers, device))
    return store_summary(store)
