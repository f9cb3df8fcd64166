"""The replay estimator (issue 33): the replayed training is the built-in trainer's, its derivative is exact
(central finite differences of the deterministic pipeline, float64), the linear prediction tracks exact
retraining for small removals, and the estimate file is read by evaluate, leakage and mislabels unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dmtoolkit.cli import cli
from dmtoolkit.errors import UserError
from dmtoolkit.estimate.files import load_estimate
from dmtoolkit.estimate.fit import fit_store
from dmtoolkit.estimate.lds import evaluate
from dmtoolkit.estimate.replay import (
    ReplayEstimator,
    check_replayable,
    choose_mode,
    fit_replay,
    forward_gradient,
    pipeline_margins,
    problem_from_trainer,
    replay_gradient,
    replay_plan,
)
from dmtoolkit.estimate.source_task import read_source_task
from dmtoolkit.recipe import parse_recipe_dict
from dmtoolkit.run.api import ensure_trained
from dmtoolkit.store import create_store
from dmtoolkit.train.fit import LoopSettings, batch_indices, margins_from_logits
from dmtoolkit.train.job import RunContext
from dmtoolkit.train.transfer import transfer_fixed_feature

from .synthetic import synthetic_data, synthetic_store

torch.set_num_threads(1)


def _recipe(models: int = 4, **training: object) -> dict:
    model = {"width": 2, "hidden": 4, "resolution": 8}
    if training.get("order") == "slots":
        model["norm"] = "none"
    return {
        "name": "tiny-replay", "source": {"dataset": "synthetic"}, "target": {"dataset": "synthetic"},
        "subsets": {"kind": "example", "alpha": 0.5, "models": models, "seed": 1, "antithetic": True},
        "model": model,
        "training": {"epochs": 2, "batch_size": 6, "lr": 0.05, "models_per_batch": 1, "randomness": "shared",
                     "weight_decay": 1e-3, "label_smoothing": 0.1, **training},
        "transfer": {"head": "ridge", "ridge": 1.0},
    }


def _context(tmp_path: Path, **training: object) -> RunContext:
    """An untrained store (18 pool images, 16 targets) and its built-in trainer: what the replay reads."""
    path = tmp_path / "runs.h5"
    create_store(path, parse_recipe_dict(_recipe(**training)), synthetic_data(3, 16, per_class=6, seed=5))
    return RunContext.from_store(path, "cpu")


def _trainer_margins(context: RunContext, subset: np.ndarray, seed: int) -> torch.Tensor:
    trainer, spec = context.trainer, context.recipe.transfer
    net = trainer.train_source_models([subset], [seed])
    logits = transfer_fixed_feature(net, trainer.target_train_x, trainer.target_train_y, trainer.target_test_x,
                                    trainer.num_target_classes, spec, [seed + 2])
    return margins_from_logits(logits, trainer.target_test_y)[0]


def test_the_replay_at_the_full_pool_is_the_trainer(tmp_path: Path) -> None:
    # 18 images in batches of 6: the trainer cuts the full pool into the replay's contiguous slots exactly
    context = _context(tmp_path)
    seed, pool = context.job(0).seed, np.arange(18)
    settings = LoopSettings(epochs=2, batch_size=6, lr=0.05, momentum=0.9, weight_decay=0.0)
    index, base, per_epoch, steps = replay_plan(18, 18, seed + 1, settings)
    assert (per_epoch, steps) == (3, 6) and base.min() == 1
    np.testing.assert_array_equal(index, batch_indices(pool, 18, seed + 1, 6, 6))  # the trainer's own batches
    problem, _, _ = problem_from_trainer(context.trainer, seed, 18)
    replayed = pipeline_margins(problem, torch.ones(18))
    expected = _trainer_margins(context, pool, seed)
    assert expected.abs().max() > 0.05
    torch.testing.assert_close(replayed, expected, rtol=0, atol=2e-6)


def test_with_slots_the_replay_at_a_mask_is_the_trainer_on_that_subset(tmp_path: Path) -> None:
    context = _context(tmp_path, order="slots")
    seed, mask = context.job(0).seed, context.masks[0]
    problem, _, _ = problem_from_trainer(context.trainer, seed, int(mask.sum()))
    replayed = pipeline_margins(problem, torch.as_tensor(mask, dtype=torch.float32))
    torch.testing.assert_close(replayed, _trainer_margins(context, np.flatnonzero(mask), seed), rtol=0, atol=2e-6)


@pytest.mark.parametrize(("order", "mode"), [("shuffle", "reverse"), ("slots", "reverse"), ("shuffle", "forward")])
def test_the_derivative_is_exact_against_central_differences(tmp_path: Path, order: str, mode: str) -> None:
    context = _context(tmp_path, order=order)
    problem, _, _ = problem_from_trainer(context.trainer, context.job(0).seed, 9, torch.float64)
    w0 = torch.full((18,), 0.5, dtype=torch.float64)
    columns = slice(2, 7)
    differentiate = replay_gradient if mode == "reverse" else forward_gradient
    derivative, margins = differentiate(problem, w0, columns, chunk=7)  # chunks of 7 targets / source examples
    torch.testing.assert_close(margins, pipeline_margins(problem, w0, columns), rtol=0, atol=1e-12)
    h, fd = 1e-5, torch.zeros(18, 5, dtype=torch.float64)
    for i in range(18):
        e = torch.zeros(18, dtype=torch.float64)
        e[i] = h
        fd[i] = (pipeline_margins(problem, w0 + e, columns) - pipeline_margins(problem, w0 - e, columns)) / (2 * h)
    assert fd.abs().max() > 1e-3
    assert float((derivative - fd).abs().max() / fd.abs().max()) < 1e-6


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_the_source_task_column_is_exact_against_central_differences(tmp_path: Path, mode: str) -> None:
    """The mean source margin over the source test examples, differentiated beside the targets (its adjoint
    swept back with the first chunk in reverse mode, its tangent read off the final state in forward mode)."""
    context = _context(tmp_path)
    problem, _, _ = problem_from_trainer(context.trainer, context.job(0).seed, 9, torch.float64)
    w0 = torch.full((18,), 0.5, dtype=torch.float64)
    columns = slice(2, 7)
    differentiate = replay_gradient if mode == "reverse" else forward_gradient
    derivative, margins = differentiate(problem, w0, columns, chunk=3, source_task=True)  # two target chunks
    plain, _ = differentiate(problem, w0, columns, chunk=3)
    assert derivative.shape == (18, 6) and margins.shape == (6,)
    torch.testing.assert_close(derivative[:, :5], plain, rtol=1e-10, atol=1e-14)  # the targets do not change
    torch.testing.assert_close(margins, pipeline_margins(problem, w0, columns, source_task=True), rtol=0, atol=1e-12)
    h, fd = 1e-5, torch.zeros(18, dtype=torch.float64)
    for i in range(18):
        e = torch.zeros(18, dtype=torch.float64)
        e[i] = h
        fd[i] = (pipeline_margins(problem, w0 + e, columns, True)[-1]
                 - pipeline_margins(problem, w0 - e, columns, True)[-1]) / (2 * h)
    assert fd.abs().max() > 1e-4
    assert float((derivative[:, 5] - fd).abs().max() / fd.abs().max()) < 1e-6


def test_the_linear_prediction_tracks_exact_retraining_for_small_removals(tmp_path: Path) -> None:
    context = _context(tmp_path)
    problem, _, _ = problem_from_trainer(context.trainer, context.job(0).seed, 18, torch.float64)
    one = torch.ones(18, dtype=torch.float64)
    derivative, margins = replay_gradient(problem, one)
    correlations = []
    for removed in ([5], [3, 11], [0], [7, 8], [1], [12, 13]):
        # down-weighting by ε: the first-order prediction's error is O(ε²), so its relative error halves with ε
        # (the pipeline is only piecewise smooth — ReLU, max-pooling, the margin's max, the std floor — and
        # for some examples a kink lies within ε ≈ 0.01–0.02 of w = 1, so ε stays below that)
        errors = []
        for eps in (0.002, 0.001):
            w = one.clone()
            w[removed] = 1 - eps
            actual = pipeline_margins(problem, w) - margins
            errors.append(float((actual + eps * derivative[removed].sum(0)).norm() / actual.norm()))
        assert errors[1] < 3e-3 and 1.8 < errors[0] / errors[1] < 2.2
        # removing the examples outright (retraining without them): the prediction keeps the direction
        w = one.clone()
        w[removed] = 0
        actual = (pipeline_margins(problem, w) - margins).numpy()
        correlations.append(np.corrcoef(actual, -derivative[removed].sum(0).numpy())[0, 1])
    # measured 0.97, 0.73, 0.77, 0.86, 0.79, 0.43: kinks between w = 1 and the removal cost accuracy
    assert min(correlations) > 0.3 and np.mean(correlations) > 0.7


# --- the estimator on a trained store ----------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "runs.h5"
    ensure_trained(path, parse_recipe_dict(_recipe(models=12)), workers=1, device="cpu", progress=False,
                   data=synthetic_data(3, 16, per_class=6, seed=5))
    return path


@pytest.mark.parametrize("point", ["centre", "pool", "row:3"])
def test_end_to_end_on_an_example_store(trained_store: Path, tmp_path: Path, point: str) -> None:
    out = tmp_path / "replay.h5"
    messages: list[str] = []
    model = fit_replay(trained_store, out, point=point, chunk=10, holdout_frac=0.3, seed=0,
                       progress=messages.append)
    assert messages == ["replay: targets 0-9 done", "replay: targets 10-15 done"]
    est = load_estimate(out)
    assert est.estimator == "replay" and est.kind == "example"
    assert est.matrix.shape == (18, 16) and np.isfinite(est.matrix).all() and np.abs(est.matrix).max() > 0
    np.testing.assert_array_equal(est.matrix, model.coef_)
    with h5py.File(trained_store, "r") as f:
        masks = f["masks"][()]
    with h5py.File(out, "r") as f:
        w0, at_point = f["replay/point"][()], f["replay/margin_at_point"][()]
    expected_w0 = {"centre": np.full(18, 0.5), "pool": np.ones(18), "row:3": masks[3].astype(float)}[point]
    np.testing.assert_array_equal(w0, expected_w0)
    # the predictor is the Taylor expansion at w0: it gives back the replayed margins there
    np.testing.assert_allclose(model.predict(w0[None])[0], at_point, atol=1e-4)
    attrs = est.attrs
    assert attrs["replay_point"] == point and attrs["replay_steps"] == 4 and attrs["replay_subset_size"] == 9
    assert attrs["replay_steps_per_epoch"] == 2  # ceil(9 / 6) steps per epoch, 2 epochs
    assert attrs["replay_randomness"] == "shared" and attrs["replay_order"] == "shuffle"
    assert attrs["replay_state_bytes"] == 5 * attrs["replay_state_numel"] * 4
    assert json.loads(attrs["settings"]) == {"point": point, "mode": "auto", "double": False, "chunk": 10,
                                             "networks": 1}
    assert attrs["replay_mode"] == "reverse"  # 16 targets, 18 source examples
    # one training's cost is timed inside the reverse sweep's own forward pass (no extra training for it)
    assert 0 < attrs["replay_train_cpu_seconds"] < attrs["replay_cpu_seconds"]
    assert attrs["replay_networks"] == 1 and json.loads(attrs["replay_seeds"]) == [attrs["replay_seed"]]
    result = evaluate(trained_store, out)
    assert result.estimator == "replay" and result.heldout_models == len(est.test_rows)
    for command in (["leakage", str(out), "--json", "--no-features"], ["mislabels", str(out), "--json"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 0, (command, result.output)
    # one network (one seed): no standard error, and the detectors say why nothing is flagged
    assert est.stderr is None and "from 1 network" in attrs["stderr_missing"] and "--networks" in attrs["stderr_missing"]
    assert json.loads(result.output)["flagged"] == [] and "--networks" in json.loads(result.output)["evidence"]


def test_cli_replay_then_evaluate(trained_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.h5"
    runner = CliRunner()
    result = runner.invoke(cli, ["replay", str(trained_store), "-o", str(out), "--point", "pool", "--targets", "2:7",
                                 "--double", "--device", "cpu", "--holdout-frac", "0.3"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "derivatives (18, 5) at w0 = pool, reverse mode" in result.output
    est = load_estimate(out)
    assert est.columns == slice(2, 7) and est.attrs["replay_dtype"] == "float64"
    # the same columns from the float32 replay of the whole target set agree to float precision
    assert choose_mode("auto", 18, 16) == "reverse" and choose_mode("auto", 18, 19) == "forward"
    whole = ReplayEstimator(trained_store, point="pool", mode="forward")
    with h5py.File(trained_store, "r") as f:
        masks, margins = f["masks"][()], f["margins"][()]
    whole.fit(masks, margins, est.fit_rows)
    np.testing.assert_allclose(whole.coef_[:, 2:7], est.matrix, atol=1e-4 * np.abs(est.matrix).max())
    assert whole.mode_ == "forward" and np.isnan(whole.train_cpu_seconds_)  # forward mode trains only with tangents
    result = runner.invoke(cli, ["evaluate", str(trained_store), "--estimate", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["estimator"] == "replay"


def test_refuses_what_it_cannot_differentiate(tmp_path: Path, trained_store: Path) -> None:
    base = {k: v for k, v in _recipe().items() if k not in ("model", "training", "transfer")}
    user = parse_recipe_dict({**base, "trainer": "mytrainer:train"})
    with pytest.raises(UserError, match=r"^x\.h5: this store's rows come from trainer mytrainer:train, not the "
                                        r"built-in networks \(their training and features\), which `dmtoolkit replay` needs"):
        check_replayable(user, "x.h5")
    linear = parse_recipe_dict({**_recipe(), "transfer": {"head": "logistic"}})
    with pytest.raises(UserError, match="closed-form ridge head"):
        check_replayable(linear, "x.h5")
    store = synthetic_store(tmp_path / "class.h5", np.zeros((6, 4), np.float32))
    result = CliRunner().invoke(cli, ["replay", str(store), "-o", str(tmp_path / "r.h5"), "--holdout-frac", "0.2"])
    assert result.exit_code == 1 and "example-level" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["replay", str(trained_store), "-o", str(tmp_path / "r.h5"), "--point", "edge"])
    assert result.exit_code == 1 and "must be pool, centre or row:N" in result.output
    with h5py.File(trained_store, "r") as f:
        masks, margins = f["masks"][()], f["margins"][()]
    with pytest.raises(UserError, match="not those of"):
        ReplayEstimator(trained_store).fit(~masks, margins)
    assert not (tmp_path / "r.h5").exists()


def test_several_networks_average_the_derivatives_of_their_seeds(tmp_path: Path) -> None:
    # per-model randomness: every row trained from its own seed; networks=3 replays the first three fitting rows'
    # seeds, and the estimate is the mean of the three single-network derivatives (each the replay of that seed)
    path = tmp_path / "per-model.h5"
    ensure_trained(path, parse_recipe_dict(_recipe(models=8, randomness="per-model")), workers=1, device="cpu",
                   progress=False, data=synthetic_data(3, 16, per_class=6, seed=5))
    with h5py.File(path, "r") as f:
        masks, margins, seeds = f["masks"][()], f["margins"][()], f["seed"][()]
    rows = np.array([1, 2, 4, 5, 6, 7])
    model = ReplayEstimator(path, networks=3, chunk=16).fit(masks, margins, rows)
    assert model.seeds_ == tuple(int(s) for s in seeds[[1, 2, 4]]) and len(set(model.seeds_)) == 3
    assert any("6 seeds; 3 replayed networks" in w for w in model.warnings_)
    context = RunContext.from_store(path, "cpu")
    tasks = []
    for k, seed in enumerate(model.seeds_):
        problem, _, _ = problem_from_trainer(context.trainer, seed, int(round(masks[rows].sum(1).mean())))
        alone, at_point = replay_gradient(problem, torch.full((18,), 0.5), source_task=True)
        np.testing.assert_allclose(model.network_coef_[k], alone[:, :-1].numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(model.network_margin_at_point_[k], at_point[:-1].numpy(), rtol=1e-5, atol=1e-6)
        tasks.append(alone[:, -1].double().numpy())
    # the source-task column the same way: the mean of the seeds' derivatives and their sd / √3
    np.testing.assert_allclose(model.source_task_.coef, np.mean(tasks, 0), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(model.source_task_.stderr, np.std(tasks, 0, ddof=1) / np.sqrt(3), rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(model.coef_, model.network_coef_.mean(0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(model.predict(np.full((1, 18), 0.5))[0], model.network_margin_at_point_.mean(0),
                               atol=1e-5)
    # its error: the sd of the three seeds' derivatives / √3, Student t with 2 dof, saved with the estimate
    np.testing.assert_allclose(model.stderr_, model.network_coef_.astype(np.float64).std(0, ddof=1) / np.sqrt(3),
                               rtol=1e-4, atol=1e-8)
    assert model.stderr_dof_ == 2
    out = tmp_path / "three.h5"
    fit_store(path, out, model, test_fraction=0.25)
    saved = load_estimate(out)
    assert saved.stderr is not None and saved.stderr_dof == 2
    assert saved.attrs["stderr_method"].startswith("spread across 3 independently trained networks (sd / √3)")
    mislabels = CliRunner().invoke(cli, ["mislabels", str(out), "--json"])
    evidence = json.loads(mislabels.output)["evidence"]
    assert mislabels.exit_code == 0 and "one-sided p-values from spread across 3" in evidence
    assert "only 3 networks" in evidence and "fit more networks (--networks)" in evidence
    assert "the source task scored by the same networks" in evidence  # harm to the source task is tested too
    np.testing.assert_allclose(read_source_task(out).coef, model.source_task_.coef)
    with pytest.raises(UserError, match=r"^7 replayed networks need as many training seeds; the 6 fitting rows of .* "
                                        r"trained from 6 \(training randomness 'per-model'\)$"):
        ReplayEstimator(path, networks=7).fit(masks, margins, rows)


def test_one_seed_cannot_give_several_networks(trained_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.h5"
    result = CliRunner().invoke(cli, ["replay", str(trained_store), "-o", str(out), "--networks", "2"])
    assert result.exit_code == 1 and "error: 2 replayed networks need as many training seeds" in result.output
    assert "trained from 1 (training randomness 'shared')" in result.output and not out.exists()


def test_the_points_study_scores_each_point_as_evaluate_does(trained_store: Path, tmp_path: Path) -> None:
    """benchmarks/replay_study.py points: each point alone scores what `evaluate` scores for that estimate, the
    mean of two points is their averaged Taylor expansion, fit-rows:K takes the first estimate's fitting rows."""
    import shutil

    from dmtoolkit.estimate.base import linear_prediction
    from dmtoolkit.stats.lds import summarise_lds

    from .benchmark_scripts import load_benchmark

    study = load_benchmark("replay_study")
    store = tmp_path / "runs.h5"
    shutil.copy(trained_store, store)
    result = study.linearisation_points(store, ["centre", "fit-rows:2"], "0:16", test_fraction=0.3)
    centre = load_estimate(tmp_path / "runs-replay-centre.h5")
    rows = [f"row:{r}" for r in centre.fit_rows[:2]]
    assert result["points"] == ["centre", *rows] and set(result["cpu_seconds"]) == {"centre", *rows}
    for point in result["points"]:
        path = tmp_path / f"runs-replay-{point.replace(':', '-')}.h5"
        assert result["alone"][point]["lds"] == pytest.approx(evaluate(store, path).lds_mean)
    with h5py.File(store, "r") as f:
        masks, margins = f["masks"][()][centre.test_rows], f["margins"][()][centre.test_rows]
    first_row = load_estimate(tmp_path / f"runs-replay-row-{centre.fit_rows[0]}.h5")
    mean = (linear_prediction(masks, centre.matrix, centre.intercept)
            + linear_prediction(masks, first_row.matrix, first_row.intercept)) / 2
    assert result["mean_of_first"]["2"]["lds"] == pytest.approx(summarise_lds(mean, margins.astype(float))[1])
    assert json.loads((tmp_path / "runs-points.json").read_text())["points"] == result["points"]
    paired = result["mean_of_first_minus_first"]["2"]
    assert paired["difference"] == pytest.approx(result["mean_of_first"]["2"]["lds"] - result["alone"]["centre"]["lds"])
    assert paired["interval"] is None  # 4 held-out models are 2 antithetic draws: too few to resample
