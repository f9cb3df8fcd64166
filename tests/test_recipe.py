"""Recipes: shipped ones validate; bad ones give one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmtoolkit.errors import RecipeError
from dmtoolkit.recipe import load_recipe, parse_recipe_text

from .conftest import RECIPES

BASE = "name: x\nsource: {dataset: glyphs}\ntarget: {dataset: mnist5k}\n"


def test_shipped_recipes_validate() -> None:
    default = load_recipe(RECIPES / "glyphs-to-mnist.yaml")
    assert default.subsets.kind == "class" and default.subsets.alpha == 0.5
    assert default.planting.leaks > 0 and default.planting.flip_fraction > 0
    examples = load_recipe(RECIPES / "glyphs-to-mnist-examples.yaml")
    assert examples.subsets.kind == "example"


def test_paper_recipe_describes_the_paper_setting() -> None:
    paper = load_recipe(RECIPES / "imagenet-to-cifar10.yaml")
    assert paper.model.arch == "resnet18"
    assert (paper.model.resolution, paper.model.final_resolution) == (160, 192)
    t = paper.training
    assert (t.lr, t.momentum, t.weight_decay, t.batch_size, t.epochs) == (0.5, 0.9, 5e-5, 1024, 16)
    assert (t.schedule, t.peak_epoch) == ("triangular", 2)
    assert paper.transfer.mode == "fixed-feature"
    assert paper.source.beton_train and paper.target.beton_test


@pytest.mark.parametrize("extra, message", [
    ("subsets: {alpha: 1.5}", "subsets.alpha: Input should be less than 1 (got 1.5)"),
    ("subsets: {alpha: 0}", "subsets.alpha: Input should be greater than 0"),
    ("subsets: {alpah: 0.5}", "subsets.alpah: unknown key"),
    ("subsets: {models: 1}", "subsets.models: Input should be greater than or equal to 2"),
    ("subsets: {models: ten}", "subsets.models: Input should be a valid integer"),
    ("subsets: {kind: pixel}", "subsets.kind: Input should be 'class' or 'example'"),
    ("training: {epochs: -1}", "training.epochs: Input should be greater than 0"),
    ("training: {randomness: sometimes}",
     "training.randomness: Input should be 'shared', 'per-model', 'per-pair' or 'seed-blocks'"),
    ("training: {randomness: per-pair}", "training.randomness per-pair seeds antithetic pairs (a mask and its "
                                         "complement share a seed); set subsets.antithetic: true, or "
                                         "randomness shared or per-model"),
    ("training: {randomness: seed-blocks, seed_blocks: 1}", "training.seed_blocks: Input should be greater than or "
                                                            "equal to 2"),
    ("model: {arch: vgg}", "model.arch: Input should be 'tiny-cnn' or 'resnet18'"),
    ("subsets: {antithetic: true, alpha: 0.3}", "antithetic needs alpha = 0.5"),
    ("subsets: {design: orthogonal, alpha: 0.3}", "design orthogonal needs alpha = 0.5"),
    ("subsets: {design: latin}", "subsets.design: Input should be 'random' or 'orthogonal'"),
    ("transfer: {head: svm}", "transfer.head: Input should be 'logistic' or 'ridge'"),
    ("transfer: {ridge: 0}", "transfer.ridge: Input should be greater than 0"),
    ("source: {dataset: glyphs, classes: ['3']}", "source.classes: List should have at least 2 items"),
    ("planting: {leaks: 2, near_copies: 3}", "near_copies (3) cannot exceed leaks (2)"),
    ("colour: blue", "colour: unknown key"),
])
def test_bad_recipe_gives_one_line_error(extra: str, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe_text(BASE + extra, origin="r.yaml")
    text = str(info.value)
    assert message in text and text.startswith("r.yaml: ") and "\n" not in text


def test_malformed_yaml_and_missing_parts() -> None:
    with pytest.raises(RecipeError, match=r"malformed YAML at line 3, column 1"):
        parse_recipe_text("name: x\nsource: [\n")
    with pytest.raises(RecipeError, match="target: Field required"):
        parse_recipe_text("name: x\nsource: {dataset: glyphs}\n")
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        parse_recipe_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(Path("/nonexistent/recipe.yaml"))


def test_hash_covers_settings_not_formatting() -> None:
    a = parse_recipe_text(BASE)
    b = parse_recipe_text("# comment\n" + BASE.replace("{dataset: glyphs}", "\n  dataset: glyphs"))
    assert a.hash() == b.hash()
    assert a.with_overrides(models=10).hash() != a.hash()
    assert a.with_overrides(seed=5).subsets.seed == 5
    assert parse_recipe_text(BASE + "training: {weight_decay: 5e-5}").training.weight_decay == 5e-5
