"""explain --verify and counterfactual retrain real (tiny) models on the small glyphs -> MNIST recipe."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dmtoolkit.analyze import counterfactual, verify_explanation
from dmtoolkit.cli import cli
from dmtoolkit.errors import UserError
from dmtoolkit.estimate import compute_influence
from dmtoolkit.recipe import parse_recipe_dict
from dmtoolkit.report.figures import counterfactual_figure
from dmtoolkit.report.text import format_counterfactual
from dmtoolkit.run.prepare import build_run_data
from dmtoolkit.store import RunStore, create_store
from tests.conftest import SMALL_RECIPE, write_recipe
from tests.synthetic import write_rows


@pytest.fixture(scope="module")
def real_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small real store with made-up margins (no training) and its class influence."""
    tmp = tmp_path_factory.mktemp("retrain")
    recipe = parse_recipe_dict(SMALL_RECIPE)
    data = build_run_data(recipe)
    store = create_store(tmp / "runs.h5", recipe, data)
    write_rows(store, np.random.default_rng(0).normal(size=(recipe.subsets.models, len(data.target_test.labels))))
    infl = tmp / "influence.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 8 models leave some classes' standard errors undefined
        compute_influence(store, infl, device="cpu", holdout_frac=0.0)
    return {"recipe": recipe, "data": data, "store": store, "influence": infl, "tmp": tmp}


def test_counterfactual_bottom_removes_most_negative(real_files: dict, tmp_path: Path) -> None:
    out = tmp_path / "cf.h5"
    result = counterfactual(real_files["recipe"], real_files["influence"], out, order="bottom", ks=[3, 0], repeats=2,
                            data=real_files["data"], device="cpu", progress=lambda _: None)
    counterfactual_figure(result.curve, tmp_path / "cf.png")
    with h5py.File(real_files["influence"]) as f:
        overall = np.nanmean(f["coef"][()], axis=1)
    worst = set(np.argsort(overall, kind="stable")[:3].tolist())
    with h5py.File(out) as f:
        assert f.attrs["schema"] == "dmtoolkit.counterfactual" and f.attrs["order"] == "bottom"
        assert f["k"][()].tolist() == [0, 3]
        masks, accuracy = f["masks"][()], f["accuracy"][()]
        np.testing.assert_allclose(f["accuracy_mean"][()], accuracy.mean(0))
        np.testing.assert_allclose(f["accuracy_std"][()], accuracy.std(0, ddof=1))
    assert masks.shape == (2, 2, len(overall)) and masks[:, 0].all()
    for r in range(2):
        assert set(np.flatnonzero(~masks[r, 1]).tolist()) == worst
    assert ((accuracy >= 0) & (accuracy <= 1)).all()
    assert result.accuracy_mean == pytest.approx(accuracy.mean(0).tolist())
    assert result.to_json()["accuracy"] == accuracy.tolist() and result.k == (0, 3)
    assert (tmp_path / "cf.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UserError, match="already exists"):
        counterfactual(real_files["recipe"], real_files["influence"], out, ks=[0], repeats=1, data=real_files["data"])


def test_counterfactual_cli_random_and_errors(real_files: dict, tmp_path: Path) -> None:
    recipe_path = write_recipe(tmp_path / "small.yaml", SMALL_RECIPE)
    out = tmp_path / "cf-random.h5"
    runner = CliRunner()
    args = ["counterfactual", str(recipe_path), "--influence", str(real_files["influence"]), "--order", "random",
            "--k", "0,2", "--repeats", "1", "-o", str(out), "--json", "--device", "cpu"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["k"] == [0, 2] and data["accuracy_std"] == [0.0, 0.0]
    with h5py.File(out) as f:
        assert (~f["masks"][0, 1]).sum() == 2
    bad = runner.invoke(cli, args[:8] + ["--k", "0,999", "-o", str(tmp_path / "x.h5")])
    assert bad.exit_code == 1 and "k=999 is out of range" in bad.output
    bad = runner.invoke(cli, args[:8] + ["--k", "a", "-o", str(tmp_path / "x.h5")])
    assert bad.exit_code == 1 and "not a comma-separated list" in bad.output


def test_verify_explanation_trains_pairs(real_files: dict) -> None:
    lines: list[str] = []
    result = verify_explanation(real_files["influence"], 0, 1, device="cpu", progress=lines.append)
    v = result.verify
    assert v.class_name == result.most_negative[0].name
    assert v.repeats == 1 and v.correct_removed in (0, 1) and v.correct_kept in (0, 1)
    assert v.rate_kept == v.correct_kept
    assert result.to_json()["verify"]["class"] == v.class_name
    assert len(lines) == 1 and lines[0].startswith("verify: 1/1 pairs trained")
    res = CliRunner().invoke(cli, ["explain", str(real_files["influence"]), "--target", "0", "--verify", "1",
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert f"verify: without {v.class_name} correct {v.correct_removed}/1, with it {v.correct_kept}/1" in res.output


def test_repeats_differ_in_training_randomness_even_when_shared(real_files: dict) -> None:
    """Under shared randomness, repeat r moves the training seed: same repeat, same model; another, another."""
    from dmtoolkit.analyze import train_masks

    recipe = parse_recipe_dict({**SMALL_RECIPE, "training": {**SMALL_RECIPE.get("training", {}), "randomness": "shared"}})
    mask = np.ones((1, real_files["data"].num_units(recipe.subsets.kind)), bool)
    first, again, other = (train_masks(recipe, real_files["data"], mask, seed=5, repeat=r, device="cpu")[0]
                           for r in (0, 0, 1))
    np.testing.assert_array_equal(first.margins, again.margins)
    assert not np.allclose(first.margins, other.margins)


@pytest.mark.parametrize("randomness", ["per-pair", "seed-blocks"])
def test_pair_randomness_retrains_rows_with_one_shared_seed(real_files: dict, randomness: str) -> None:
    """A retraining has no antithetic pairs; under pair-seeded randomness its rows share the repeat's seed,
    exactly as under shared randomness."""
    from dmtoolkit.analyze import train_masks

    training = SMALL_RECIPE.get("training", {})
    recipe = parse_recipe_dict({**SMALL_RECIPE, "subsets": {**SMALL_RECIPE["subsets"], "antithetic": True},
                                "training": {**training, "randomness": randomness}})
    shared = parse_recipe_dict({**SMALL_RECIPE, "training": {**training, "randomness": "shared"}})
    units = real_files["data"].num_units(recipe.subsets.kind)
    masks = np.ones((3, units), bool)
    masks[1, 0] = masks[2, 1] = False
    rows = train_masks(recipe, real_files["data"], masks, seed=5, repeat=1, device="cpu")
    reference = train_masks(shared, real_files["data"], masks, seed=5, repeat=1, device="cpu")
    assert len({r.seed for r in rows}) == 1
    assert [r.seed for r in rows] == [r.seed for r in reference]
    for a, b in zip(rows, reference):
        np.testing.assert_allclose(a.margins, b.margins, atol=1e-5)


def test_counterfactual_plan_and_save_without_training(real_files: dict, tmp_path: Path) -> None:
    """plan -> (any accuracy) -> save: the masks the plan trains, the file it writes, the curve read back."""
    from dmtoolkit.analyze import load_counterfactual, plan_counterfactual, save_counterfactual

    out = tmp_path / "cf.h5"
    plan = plan_counterfactual(real_files["recipe"], real_files["influence"], out, data=real_files["data"],
                               order="top", ks=[4, 0, 2], repeats=2)
    with h5py.File(real_files["influence"]) as f:
        overall = np.nanmean(f["coef"][()], axis=1)
    best = np.argsort(-overall, kind="stable")
    assert plan.k == (0, 2, 4) and plan.removal[0][:4] == tuple(best[:4].tolist()) and plan.seed(1) == 3 + 2
    masks = plan.masks
    assert masks.shape == (2, 3, len(overall)) and masks[:, 0].all()
    assert [set(np.flatnonzero(~masks[0, i]).tolist()) for i in (1, 2)] == [set(best[:2].tolist()), set(best[:4].tolist())]
    assert not out.exists()  # planning writes nothing
    accuracy = np.array([[0.5, 0.6, 0.7], [0.7, 0.6, 0.5]])
    result = save_counterfactual(plan, accuracy)
    assert result.accuracy_mean == pytest.approx([0.6, 0.6, 0.6]) and result.removed_first == tuple(
        real_files["data"].source_class_names[k] for k in best[:4])
    assert [p.name for p in tmp_path.iterdir()] == ["cf.h5"]  # renamed into place, no temporary file left
    names = [real_files["data"].source_class_names[k] for k in best[:4]]
    lines = format_counterfactual(result).splitlines()
    assert lines[0] == "order top (most positive mean influence first), 2 repeats:"
    assert lines[4:] == ["classes removed:", "  k=0    none", f"  k=2    {', '.join(names[:2])}",
                         f"  k=4    {', '.join(names)}"]
    assert result.to_json()["removed"] == {"0": [[]], "2": [names[:2]], "4": [names]}
    curve = load_counterfactual(out)
    assert curve.order == "top" and curve.k == (0, 2, 4) and curve.mean == pytest.approx(result.accuracy_mean)
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["masks"][()], masks)
        np.testing.assert_allclose(f["accuracy"][()], accuracy)
    with pytest.raises(UserError, match="already exists"):
        save_counterfactual(plan, accuracy)
    with pytest.raises(UserError, match="source classes differ"):
        bad = real_files["data"].__class__(**{**real_files["data"].__dict__,
                                              "source_class_names": tuple(reversed(real_files["data"].source_class_names))})
        plan_counterfactual(real_files["recipe"], real_files["influence"], tmp_path / "x.h5", data=bad)


def test_random_counterfactual_lists_each_repeats_classes(real_files: dict, tmp_path: Path) -> None:
    from dmtoolkit.analyze import plan_counterfactual, save_counterfactual

    plan = plan_counterfactual(real_files["recipe"], real_files["influence"], tmp_path / "cf.h5",
                               data=real_files["data"], order="random", ks=[0, 3], repeats=2)
    result = save_counterfactual(plan, np.array([[0.5, 0.4], [0.6, 0.3]]))
    names = real_files["data"].source_class_names
    removed = [[names[k] for k in plan.removal[r][:3]] for r in range(2)]
    assert removed[0] != removed[1]  # each repeat draws its own classes
    lines = format_counterfactual(result).splitlines()
    assert lines[0] == "order random (a random order per repeat), 2 repeats:"
    assert lines[3:] == ["classes removed:", "  k=0    none", f"  k=3    repeat 1: {', '.join(removed[0])}",
                         f"  k=3    repeat 2: {', '.join(removed[1])}"]


def test_retraining_goes_through_an_executor_and_matches_a_direct_computation(real_files: dict) -> None:
    """train_masks trains a temporary store with any executor; its rows equal RunContext on the same masks."""
    from dmtoolkit.analyze import train_masks
    from dmtoolkit.run.executors import make_executor
    from dmtoolkit.train.job import RunContext

    recipe, data = real_files["recipe"], real_files["data"]
    masks = np.ones((3, data.num_units(recipe.subsets.kind)), bool)
    masks[1, :3], masks[2, 3:6] = False, False
    calls = []

    def executor() -> object:  # in this process, so threads (and so float rounding) match the direct computation
        calls.append(1)
        return make_executor("local", 1, "cpu")

    results = train_masks(recipe, data, masks, seed=7, repeat=1, executor=executor)
    direct = RunContext(recipe.with_overrides(seed=7, training_seed=recipe.training.seed + 1), masks, data, "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every executor computes
    try:
        expected = sorted((r for g in range(-(-3 // direct.group_size)) for r in direct.compute_group(g)),
                          key=lambda r: r.index)
    finally:
        torch.set_num_threads(threads)
    assert calls == [1] and [r.index for r in results] == [0, 1, 2]
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got.margins, want.margins, atol=1e-5)
        assert got.seed == want.seed and abs(got.target_accuracy - want.target_accuracy) < 1e-6  # stored as float32


def _retrain_through_a_store(recipe, data, masks: np.ndarray, seed: int, repeat: int, path: Path) -> list:
    """The reference: retraining as it was before plans (the masks as explicit masks of a run store with every
    image, trained by `train_store`, rows read back), built here from create_store and train_store."""
    from dmtoolkit.recipe_overrides import apply_overrides
    from dmtoolkit.run.driver import train_store
    from dmtoolkit.run.executors import make_executor

    padded = masks if len(masks) >= 2 else np.concatenate([masks, masks[:1]])
    section = "trainer" if recipe.trainer else "training"
    overrides = {"subsets.models": len(padded), "subsets.seed": seed, "subsets.antithetic": False,
                 "subsets.design": "random", f"{section}.seed": recipe.seeding[0] + repeat}
    if recipe.seeding[1] in ("per-pair", "seed-blocks"):
        overrides[f"{section}.randomness"] = "shared"
    store = create_store(path, apply_overrides(recipe, overrides, origin="reference"), data, masks=padded)
    train_store(store, make_executor("local", 1, "cpu"), progress=False)
    with RunStore(store) as run:
        return [run.margins[:len(masks)], run.row_values(np.arange(len(masks)))]


@pytest.mark.parametrize("rows", [3, 1])
def test_retraining_without_a_store_gives_the_store_paths_rows_bit_for_bit(real_files: dict, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            rows: int) -> None:
    """train_masks hands the executor a plan over the data in memory and writes no file; its rows (margins,
    seeds, accuracies, predictions) are bit for bit those of the temporary store it used to write, a single
    row included (it trains beside a copy of itself, as in a store of 2 models)."""
    import tempfile

    from dmtoolkit.analyze import train_masks

    training = SMALL_RECIPE.get("training", {})
    recipe = parse_recipe_dict({**SMALL_RECIPE, "subsets": {**SMALL_RECIPE["subsets"], "antithetic": True},
                                "training": {**training, "randomness": "per-pair"}})
    data = real_files["data"]
    masks = np.ones((rows, data.num_units(recipe.subsets.kind)), bool)
    masks[0, :2] = False
    masks[-1, 4:7] = False
    margins, values = _retrain_through_a_store(recipe, data, masks, seed=11, repeat=2, path=tmp_path / "ref.h5")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    results = train_masks(recipe, data, masks, seed=11, repeat=2, device="cpu")
    assert list(scratch.iterdir()) == []  # no temporary store
    assert [r.index for r in results] == list(range(rows))
    np.testing.assert_array_equal(np.stack([r.margins for r in results]), margins)
    np.testing.assert_array_equal([r.seed for r in results], values["seed"])
    np.testing.assert_array_equal(np.stack([r.predictions for r in results]), values["predictions"])
    for name in ("source_accuracy", "target_accuracy"):
        np.testing.assert_array_equal([getattr(r, name) for r in results], values[name])


def test_retraining_in_worker_processes_reads_the_source_store_or_receives_the_data(real_files: dict,
                                                                                    tmp_path: Path) -> None:
    """Worker processes compute a retraining's plan from its store's data (`store=`) or, without a store, from
    the data sent with the plan; either way the rows are the in-process ones (every worker uses one thread)."""
    from dmtoolkit.analyze import train_masks
    from dmtoolkit.run.executors import LocalExecutor

    recipe, data = real_files["recipe"], real_files["data"]
    masks = np.ones((4, data.num_units(recipe.subsets.kind)), bool)
    masks[1, :3], masks[2, 3:6], masks[3, ::2] = False, False, False
    serial = train_masks(recipe, data, masks, seed=4, device="cpu")
    for store in (real_files["store"], None):
        pooled = train_masks(recipe, data, masks, seed=4, store=store, executor=lambda: LocalExecutor(2, "cpu"))
        np.testing.assert_array_equal(np.stack([r.margins for r in pooled]), np.stack([r.margins for r in serial]))
        assert [r.seed for r in pooled] == [r.seed for r in serial]
