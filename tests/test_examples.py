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
    assert result.exit_code == 1 and "this store has no images (its recipe's trainer brings its own data), which `dmtoolkit subpop --png` needs" \
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


def test_digits_examples_gradient_hook_through_the_cli(tmp_path: Path) -> None:
    """examples/digits_examples.py: a user's trainer whose module also defines gradient_networks(job) gets a
    gradient estimate (with its own checkpoints), scored and read by evaluate, leakage and mislabels."""
    import json

    from dmtoolkit.estimate.files import load_estimate
    from dmtoolkit.estimate.source_task import read_source_task

    store, out = tmp_path / "digit-examples.h5", tmp_path / "gradient.h5"
    run("init", EXAMPLES / "digits-examples.yaml", store, "--models", 12)
    run("train", store, "--workers", "1", "--quiet")
    result = run("gradient", store, "-o", out, "--models", 3, "--full-models", 1, "--proj-dim", 128,
                 "--holdout-frac", 0.25)
    assert "scores (170, 100) from 4 networks" in result.output
    est = load_estimate(out)
    assert est.estimator == "gradient" and est.matrix.shape == (170, 100) and np.isfinite(est.matrix).all()
    assert est.attrs["gradient_networks"] == "examples.digits_examples:gradient_networks"
    # the options' checkpoints (20, 40) and the final weights, for each of the 4 networks
    assert json.loads(est.attrs["gradient_checkpoints"]) == [["epoch 20", "epoch 40", "epoch 60"]] * 4
    with h5py.File(out, "r") as f:
        rows, errors = f["gradient/rows"][()], f["gradient/margin_error"][()]
    # the hook retrains each row exactly as the trainer did: its final network reproduces the stored margins
    assert list(rows[:3]) == sorted(rows[:3]) and rows[3] == -1 and set(rows[:3]) <= set(est.fit_rows.tolist())
    assert np.all(errors[:3] < 1e-5) and np.isnan(errors[3])
    evaluation = json.loads(run("evaluate", store, "--estimate", out, "--json").output)
    assert evaluation["estimator"] == "gradient" and evaluation["heldout_models"] == len(est.test_rows) > 0
    leakage = json.loads(run("leakage", out, "--json", "--no-features").output)
    assert leakage["estimator"] == "gradient" and leakage["verdict"] == "contamination"
    assert len(leakage["copies"]) == 5  # the recipe's 5 planted copies, from pixels (the store holds the images)
    mislabels = json.loads(run("mislabels", out, "--json").output)
    # the hook gives source_test, so each network also scored the source task: mislabels tests harm to both
    assert read_source_task(out).stderr is not None and "the source task scored by the same networks" in mislabels["evidence"]
    assert all(c["source_p"] is not None for c in mislabels["candidates"])
    # the gradient ranking of the 8 planted label flips (measured AUC 0.95 on this seed; chance is 0.5)
    assert mislabels["planted"]["flipped"] == 8 and mislabels["planted"]["auc"] > 0.8
    # the trainer also returns its stated-label source margins: every row keeps them, and any estimate of the
    # store (here difference of means) carries the label check of its 12 models, which mislabels lists by
    with h5py.File(store, "r") as f:
        assert f["source_margins"].shape == (12, 170) and np.isfinite(f["source_margins"][()]).all()
        assert f["source_test_margins"].shape == (12, 200) and np.isfinite(f["source_test_margins"][()]).all()
    influence = tmp_path / "influence.h5"
    run("influence", store, "-o", influence, "--holdout-frac", 0)
    checked = json.loads(run("mislabels", influence, "--json").output)
    assert "label checked out of sample" in checked["evidence"]
    assert checked["planted"]["auc"] > 0.8 and all(c["heldout_margin"] is not None for c in checked["candidates"])
