"""The two user trainers in examples/ run at small scale: valid stores that the estimators read.

(a) examples/image_finetune.py: a user-written CNN on an `imagefolder:` source, fully fine-tuned on digits;
(b) examples/digits_mlp.py: tabular digits, source units = classes, a small MLP, the trainer's own data.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from dmtoolkit.cli import cli
from dmtoolkit.recipe import load_recipe
from dmtoolkit.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(*args: object):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(autouse=True)
def from_the_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # as the README says to run them: `examples.MODULE` imports from the working directory


def check_store_and_influence(store: Path, tmp_path: Path, trainer: str, units: int, targets: int) -> None:
    run("store", "validate", store)
    with RunStore(store) as s:
        assert s.completed_mask().all() and s.trainer == trainer and s.trainer_source_sha256
        accuracy = s.column("target_accuracy")
    out = tmp_path / "influence.h5"
    run("influence", store, "-o", out)
    with h5py.File(out, "r") as f:
        assert f["coef"].shape == (units, targets) and np.isfinite(f["coef"][()]).any()
    run("rank", out)
    assert accuracy.mean() > 0.5  # both examples transfer well above chance (10 classes; 2 classes)


def test_digits_mlp_example(tmp_path: Path) -> None:
    from examples.digits_mlp import target_labels

    recipe = load_recipe(EXAMPLES / "digits-mlp.yaml")
    assert recipe.own_data.target_labels == target_labels()  # the recipe matches what the trainer measures
    store = tmp_path / "digits.h5"
    run("init", EXAMPLES / "digits-mlp.yaml", store, "--models", 8)
    run("train", store, "--workers", "1", "--quiet")
    check_store_and_influence(store, tmp_path, "examples.digits_mlp:train", 10, 100)
    with RunStore(store) as s:
        assert not s.has_images  # the trainer brought its own data: no pixels to show or compare
    result = CliRunner().invoke(cli, ["subpop", str(tmp_path / "influence.h5"), "--class", recipe.own_data.unit_names[0]
                                      if recipe.own_data.unit_names else "0", "--png", str(tmp_path / "grid.png")])
    assert result.exit_code == 1 and "this store has no target images (its recipe's trainer brings its own data)" \
        in result.output and not (tmp_path / "grid.png").exists()


def test_image_finetune_example_on_an_imagefolder(tmp_path: Path) -> None:
    from examples.image_finetune import make_shapes_folder

    folder = make_shapes_folder(tmp_path / "shapes", per_class=12)
    recipe = yaml.safe_load((EXAMPLES / "image-finetune.yaml").read_text())
    assert recipe["source"]["dataset"].startswith("imagefolder:")
    recipe["source"]["dataset"] = f"imagefolder:{folder}"
    recipe["target"].update(train_size=120, test_size=40)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    store = tmp_path / "shapes.h5"
    run("init", path, store, "--models", 6)
    run("train", store, "--workers", "1", "--quiet")
    check_store_and_influence(store, tmp_path, "examples.image_finetune:train", 8, 40)
