"""ffcv betons: write-beton round trips exactly; a recipe naming betons trains from them (ffcv Loader, subset
indices) to accuracy close to the in-memory path, and the margins land in the store."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dmtoolkit.cli import cli
from dmtoolkit.errors import DataError

from .conftest import SMALL_RECIPE, write_recipe

pytest.importorskip("ffcv")
warnings.filterwarnings("ignore", category=DeprecationWarning)


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def betons(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from dmtoolkit.data import load_dataset
    from dmtoolkit.data.beton import write_beton

    tmp = tmp_path_factory.mktemp("betons")
    paths = {}
    for name, dataset in (("source", "glyphs"), ("target", "mnist5k")):
        for split in ("train", "test"):
            paths[f"{name}_{split}"] = write_beton(load_dataset(dataset, split), tmp / f"{dataset}-{split}.beton")
    return paths


def test_write_beton_cli_round_trip_is_exact(tmp_path: Path) -> None:
    from dmtoolkit.data import load_dataset
    from dmtoolkit.data.beton import read_beton

    original = load_dataset("digits", "test")
    for field in ("ndarray", "rgb-raw"):
        out = tmp_path / f"digits-{field}.beton"
        result = run("data", "write-beton", "digits", out, "--split", "test", "--image-field", field)
        assert result.exit_code == 0, result.output
        assert f"{len(original)} test images" in result.output
        back = read_beton(out)
        assert back.images.shape == original.images.shape  # grayscale stays one channel
        np.testing.assert_array_equal(back.images, original.images)
        np.testing.assert_array_equal(back.labels, original.labels)
        assert back.class_names == original.class_names and back.example_ids == original.example_ids
        assert back.fingerprint == original.fingerprint
    again = CliRunner().invoke(cli, ["data", "write-beton", "digits", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output


def _recipes(tmp_path: Path, betons: dict[str, Path]) -> tuple[Path, Path]:
    memory = copy.deepcopy(SMALL_RECIPE)
    memory.pop("planting")
    memory["source"]["max_per_class"] = 20
    memory["training"]["epochs"] = 2
    memory["subsets"]["models"] = 4
    beton = copy.deepcopy(memory)
    for role in ("source", "target"):
        beton[role].update(beton_train=str(betons[f"{role}_train"]), beton_test=str(betons[f"{role}_test"]))
    return write_recipe(tmp_path / "memory.yaml", memory), write_recipe(tmp_path / "beton.yaml", beton)


def test_training_from_betons_matches_memory(tmp_path: Path, betons: dict[str, Path]) -> None:
    memory_recipe, beton_recipe = _recipes(tmp_path, betons)
    stores = {}
    for name, recipe in (("memory", memory_recipe), ("beton", beton_recipe)):
        stores[name] = tmp_path / f"{name}.h5"
        assert run("init", recipe, stores[name]).exit_code == 0
        result = run("train", stores[name], "--workers", "1", "--device", "cpu", "--quiet")
        assert result.exit_code == 0, result.output
        assert run("store", "validate", stores[name]).exit_code == 0
    from dmtoolkit.train.betons import BetonPool
    from dmtoolkit.train.fit import MemoryPool
    from dmtoolkit.train.job import RunContext

    assert isinstance(RunContext.from_store(stores["beton"], "cpu").batches, BetonPool)  # chosen by the recipe
    assert isinstance(RunContext.from_store(stores["memory"], "cpu").batches, MemoryPool)
    with h5py.File(stores["memory"], "r") as m, h5py.File(stores["beton"], "r") as b:
        # the same data went into both stores (betons are exact)
        assert json.loads(m.attrs["fingerprints"])["source_pool"] == json.loads(b.attrs["fingerprints"])["source_pool"]
        np.testing.assert_array_equal(m["target/images"][()], b["target/images"][()])
        assert b["completed"][()].all() and np.isfinite(b["margins"][()]).all()
        # different data order (ffcv RANDOM vs ours), so margins differ, but accuracy is close
        assert not np.allclose(m["margins"][()], b["margins"][()])
        acc_memory, acc_beton = m["target_accuracy"][()].mean(), b["target_accuracy"][()].mean()
        assert acc_memory > 0.3 and acc_beton > 0.3  # chance is 0.1
        assert abs(acc_memory - acc_beton) < 0.12, (acc_memory, acc_beton)


def test_planting_with_a_source_beton_is_refused(tmp_path: Path, betons: dict[str, Path]) -> None:
    from dmtoolkit.recipe import parse_recipe_dict
    from dmtoolkit.run.prepare import build_run_data

    recipe = copy.deepcopy(SMALL_RECIPE)
    recipe["source"].update(beton_train=str(betons["source_train"]), beton_test=str(betons["source_test"]))
    with pytest.raises(DataError, match="planting"):
        build_run_data(parse_recipe_dict(recipe))
    recipe.pop("planting")
    recipe["source"].pop("beton_test")
    with pytest.raises(DataError, match="both beton_train and beton_test"):
        build_run_data(parse_recipe_dict(recipe))


def test_beton_pool_serves_each_models_subset_in_pool_order(tmp_path: Path) -> None:
    """BetonPool is a BatchFactory: ids map store pool rows to beton rows, and batches hold only the subset."""
    import torch

    from dmtoolkit.data import load_dataset
    from dmtoolkit.data.beton import write_beton
    from dmtoolkit.train.betons import BetonPool
    from dmtoolkit.train.fit import LoopSettings, to_tensor

    dataset = load_dataset("digits", "test")
    beton = write_beton(dataset, tmp_path / "digits.beton")
    order = np.random.default_rng(0).permutation(len(dataset))[:150]  # the store's pool: some rows, reordered
    pool_ids = [dataset.example_ids[i] for i in order]
    pool = BetonPool(beton, pool_ids, channels=1, resolution=8, device=torch.device("cpu"))
    subsets = [np.arange(0, 40), np.arange(60, 150, 2)]
    settings = LoopSettings(epochs=2, batch_size=16, lr=0.1, momentum=0.0, weight_decay=0.0)
    batches = pool(subsets, [1, 2], settings)
    assert (batches.steps_per_epoch, batches.steps) == (3, 6)
    pool_x = to_tensor(dataset.images[order], 1, 8, torch.device("cpu"))
    pool_y = torch.from_numpy(dataset.labels[order])
    for step in range(batches.steps):
        x, y, weight = batches(step)
        assert x.shape == (2, 16, 1, 8, 8) and y.shape == (2, 16) and bool((weight == 1).all())
        for g, subset in enumerate(subsets):
            # every image is one of model g's subset, with that example's label
            distance = (x[g].flatten(1)[:, None] - pool_x[subset].flatten(1)[None]).abs().amax(dim=-1)
            nearest = distance.argmin(dim=1)
            assert bool((distance.min(dim=1).values < 1e-6).all())
            assert torch.equal(y[g], pool_y[subset][nearest])
    with pytest.raises(DataError, match="not in the beton"):
        BetonPool(beton, ["no-such-example"], channels=1, resolution=8, device=torch.device("cpu"))


def test_a_sidecar_path_that_is_a_folder_is_refused_before_the_beton_is_written(tmp_path: Path) -> None:
    """The beton's JSON sidecar goes through the output guard first: no beton is left without its sidecar."""
    from dmtoolkit.data import load_dataset
    from dmtoolkit.data.beton import sidecar_path, write_beton
    from dmtoolkit.errors import OutputError

    out = tmp_path / "digits.beton"
    sidecar_path(out).mkdir()
    with pytest.raises(OutputError, match="is a directory, not a regular file"):
        write_beton(load_dataset("digits", "test"), out)
    assert not out.exists()
