"""`dmtoolkit reliability` and `reliability_report` on simulated class-level stores whose true effects are known:
margins = masks @ effects + noise, the masks drawn from the recipe's own mask seed by `create_store`."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dmtoolkit.analyze.reliability import (
    class_influence,
    class_target_matrix,
    reliability_report,
    split_half_agreements,
)
from dmtoolkit.cli import cli
from dmtoolkit.errors import UserError
from dmtoolkit.recipe import parse_recipe_dict
from dmtoolkit.stats.correlation import defined_spearman, models_for_reliability, spearman_brown
from dmtoolkit.stats.ranking import nanmean_rows
from dmtoolkit.store import RunStore, create_store
from dmtoolkit.store_checks import validate_store

from .synthetic import synthetic_data

P, T = 40, 45


def true_effects(seed: int = 0) -> np.ndarray:
    """(P, T): a class effect shared by all targets, one per target class, and a little per target."""
    rng = np.random.default_rng(seed)
    labels = synthetic_data(P, T).target_test.labels
    return (rng.normal(0, 0.3, (P, 1)) + rng.normal(0, 0.3, (P, 3))[:, labels]
            + rng.normal(0, 0.05, (P, T))).astype(np.float32)


def simulated_store(path: Path, effects: np.ndarray, *, models: int = 160, mask_seed: int = 0,
                    training_seed: int = 0, noise: float = 1.0, kind: str = "class",
                    antithetic: bool = True, design: str = "random") -> Path:
    """A store whose row i holds masks[i] @ effects plus noise (one part shared by all targets, one per target),
    drawn from both seeds so two stores with different seeds have independent noise."""
    recipe = parse_recipe_dict({
        "name": "simulated", "source": {"dataset": "synthetic"}, "target": {"dataset": "synthetic"},
        "subsets": {"kind": kind, "models": models, "seed": mask_seed, "antithetic": antithetic, "design": design},
        "training": {"seed": training_seed},
    })
    data = synthetic_data(effects.shape[0], effects.shape[1], per_class=1 if kind == "example" else 2)
    create_store(path, recipe, data)
    rng = np.random.default_rng([mask_seed, training_seed, 7])
    with h5py.File(path, "r+") as f:  # test set-up: every row at once (write_row, one by one, is 20 ms a row)
        masks = f["masks"][()].astype(np.float32)
        units = effects if kind == "class" else np.resize(effects, (masks.shape[1], effects.shape[1]))
        shared, own = rng.normal(size=(models, 1)), rng.normal(size=(models, effects.shape[1]))
        f["margins"][...] = masks @ units + noise * (shared + own)
        f["seed"][...] = np.arange(models)
        for column in ("source_accuracy", "target_accuracy", "seconds"):
            f[column][...] = 0.5
        f["completed"][...] = True
    return path


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def pair(tmp_path: Path, noise: float, seed: int, *, models: int = 200, **options: int) -> tuple[Path, Path]:
    """Two independent simulated stores (different mask and training seeds) of the same effects."""
    effects = true_effects()
    return (simulated_store(tmp_path / f"a{seed}.h5", effects, models=models, noise=noise, mask_seed=2 * seed,
                            training_seed=2 * seed, **options),
            simulated_store(tmp_path / f"b{seed}.h5", effects, models=models, noise=noise, mask_seed=2 * seed + 1,
                            training_seed=2 * seed + 1, **options))


# the library: known effects ------------------------------------------------------------------------------
def test_class_target_matrix_averages_each_target_class_and_leaves_empty_classes_nan() -> None:
    influence = np.arange(12, dtype=float).reshape(2, 6)
    influence[1, 0] = np.nan
    matrix = class_target_matrix(influence, np.array([0, 0, 1, 1, 1, 0]), 3)
    np.testing.assert_allclose(matrix[:, :2], [[(0 + 1 + 5) / 3, 3], [(7 + 11) / 2, 9]])
    assert np.isnan(matrix[:, 2]).all()
    assert defined_spearman(np.array([1.0, np.nan, 3, 2]), np.array([1.0, 5, 2, 3])) == pytest.approx(0.5)
    assert defined_spearman(np.array([1.0, np.nan, 2]), np.array([1.0, 2, 3])) is None  # two defined pairs


def test_agreement_is_high_with_little_noise_and_falls_with_more(tmp_path: Path) -> None:
    effects = true_effects()
    reports = {}
    for noise in (0.2, 10.0):
        a, b = pair(tmp_path / str(noise), noise, seed=0, models=1000)
        reports[noise] = reliability_report(a, b)
        with RunStore(a) as store:
            masks, margins = store.read_rows(store.completed_rows())
        recovered = defined_spearman(nanmean_rows(class_influence(masks, margins)), effects.mean(1))
        assert (recovered > 0.85) if noise < 1 else (recovered < 0.7), (noise, recovered)  # the true ranking
    low, high = reports[0.2], reports[10.0]
    assert low.ranking.correlation > 0.85 and low.matrix.correlation > 0.85
    assert high.ranking.correlation < 0.6 and high.matrix.correlation < 0.6
    for answer in ("ranking", "matrix"):
        for quiet, noisy in zip(low.stores, high.stores):
            assert getattr(quiet, answer).split.mean > getattr(noisy, answer).split.mean + 0.3
            assert getattr(quiet, answer).full > getattr(quiet, answer).split.mean  # Spearman–Brown to 2x the models
        needed_low, needed_high = getattr(low, answer).needed, getattr(high, answer).needed
        assert needed_low["0.8"] < needed_low["0.9"] and needed_low["0.9"] < needed_high["0.9"]
    assert low.warnings == () and validate_store(a) == []  # the set-up makes valid stores


def test_cross_run_agreement_is_what_spearman_brown_predicts_from_the_split_halves(tmp_path: Path) -> None:
    observed, predicted, uncorrected = [], [], []
    for seed in range(8):
        report = reliability_report(*pair(tmp_path, 1.0, seed))
        observed.append(report.ranking.correlation)
        predicted.append(report.ranking.predicted)
        uncorrected.append(np.sqrt(report.stores[0].ranking.split.mean * report.stores[1].ranking.split.mean))
    assert abs(np.mean(observed) - np.mean(predicted)) < 0.08, (observed, predicted)
    assert np.mean(observed) - np.mean(uncorrected) > 0.1  # the correction matters: halves agree less than runs


def test_cross_run_numbers_follow_their_definitions(tmp_path: Path) -> None:
    a = simulated_store(tmp_path / "a.h5", true_effects(), models=120, noise=1.0, mask_seed=1, training_seed=1)
    b = simulated_store(tmp_path / "b.h5", true_effects(), models=200, noise=1.0, mask_seed=2, training_seed=2)
    report = reliability_report(a, b, seeds=range(4))
    first, second = report.stores
    assert (first.models, second.models, first.mask_seed, second.training_seed) == (120, 200, 1, 2)
    assert first.randomness == "shared" and first.ranking.split.seeds == (0, 1, 2, 3)
    assert report.ranking.models == pytest.approx(np.sqrt(120 * 200))
    within = first.ranking
    assert within.split.half_models == 60  # antithetic pairs: 30 whole pairs a half
    assert within.full == pytest.approx(spearman_brown(within.split.mean, 2))
    assert within.needed["0.9"] == pytest.approx(models_for_reliability(within.split.mean, 60, 0.9))
    cross = report.matrix
    assert cross.predicted == pytest.approx(np.sqrt(first.matrix.full * second.matrix.full))
    assert cross.needed["0.8"] == pytest.approx(models_for_reliability(cross.correlation, np.sqrt(120 * 200), 0.8))
    with RunStore(a) as s, RunStore(b) as t:
        x, y = (class_influence(*store.read_rows(store.completed_rows())) for store in (s, t))
        labels = s.target_labels
    assert cross.correlation == pytest.approx(
        defined_spearman(class_target_matrix(x, labels, 3), class_target_matrix(y, labels, 3)))
    assert report.ranking.correlation == pytest.approx(defined_spearman(nanmean_rows(x), nanmean_rows(y)))


def test_regression_is_the_more_reliable_estimator_on_linear_margins(tmp_path: Path) -> None:
    a, _ = pair(tmp_path, 0.3, seed=1, models=400)
    dom, reg = (reliability_report(a, estimator=name).stores[0].ranking.split.mean
                for name in ("difference-of-means", "regression"))
    assert reg > dom + 0.1 and reg > 0.9  # least squares removes the other classes' variance
    with pytest.raises(UserError, match="does not give class influence"):
        reliability_report(a, estimator="datamodels")


def test_split_halves_keep_orthogonal_blocks_whole(tmp_path: Path) -> None:
    a = simulated_store(tmp_path / "a.h5", true_effects(), models=512, design="orthogonal")  # blocks of 2 x 64 rows
    within = reliability_report(a, seeds=range(3)).stores[0].ranking
    assert within.split.half_models == 256 and within.models == 512  # two whole blocks a half, no row lost
    assert within.full == pytest.approx(spearman_brown(within.split.mean, 2))


def test_imported_stores_have_no_seeds_and_say_independence_is_unknown(tmp_path: Path) -> None:
    from dmtoolkit.store_import import import_arrays

    paths = []
    for seed in (1, 2):
        path = simulated_store(tmp_path / f"s{seed}.h5", true_effects(), mask_seed=seed, training_seed=seed)
        with RunStore(path) as store:
            masks, margins = store.read_rows(store.completed_rows())
            names, labels = store.unit_names, store.target_labels
        paths.append(import_arrays(tmp_path / f"i{seed}.h5", masks, margins, unit_names=names, target_labels=labels,
                                   design="antithetic"))
    report = reliability_report(*paths, seeds=range(3))
    assert [(s.mask_seed, s.training_seed, s.randomness) for s in report.stores] == [(None, None, "unknown")] * 2
    assert len(report.warnings) == 2 and all("not recorded (imported store)" in w for w in report.warnings)
    pairs, rows = split_half_agreements(masks, margins, np.arange(160) // 2, labels, 3, seeds=range(3))[0], \
        split_half_agreements(masks, margins, np.arange(160), labels, 3, seeds=range(3))[0]
    assert report.stores[1].ranking.split == pairs != rows  # imported as antithetic: halves of whole pairs
    assert "mask seed unknown, training seed unknown" in run("reliability", *paths).stdout


# the command ---------------------------------------------------------------------------------------------
def test_text_output_is_a_table_of_both_stores_and_their_agreement(tmp_path: Path) -> None:
    a, b = pair(tmp_path, 1.0, seed=2)
    result = run("reliability", a, b)
    assert result.exit_code == 0, result.output
    report = reliability_report(a, b)
    lines = result.stdout.splitlines()
    assert f"{a}: 200 models, mask seed 4, training seed 4 (shared randomness)" in lines
    assert f"{b}: 200 models, mask seed 5, training seed 5 (shared randomness)" in lines
    row = next(line for line in lines if line.strip().startswith("class ranking") and "±" not in line)
    assert row.split()[2:4] == [f"{report.ranking.correlation:.3f}", f"{report.ranking.predicted:.3f}"]
    assert "warning" not in result.output
    single = run("reliability", a)
    assert single.exit_code == 0 and "cross-run" not in single.stdout and f"{a}: 200 models" in single.stdout


def test_json_output_is_the_report(tmp_path: Path) -> None:
    a, b = pair(tmp_path, 1.0, seed=3)
    result = run("reliability", a, b, "--json", "--estimator", "regression")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == json.loads(json.dumps(reliability_report(a, b, estimator="regression").to_json()))
    assert data["estimator"] == "regression" and data["goals"] == [0.8, 0.9] and data["warnings"] == []
    assert [s["mask_seed"] for s in data["stores"]] == [6, 7] and [s["training_seed"] for s in data["stores"]] == [6, 7]
    store = data["stores"][0]
    assert store["models"] == 200 and len(store["ranking"]["split_half"]["values"]) == 10
    assert set(store["matrix"]["needed"]) == {"0.8", "0.9"}
    assert -1 <= data["cross_run"]["ranking"]["correlation"] <= 1
    assert data["cross_run"]["matrix"]["models"] == pytest.approx(200)
    assert json.loads(run("reliability", a, "--json").stdout)["cross_run"] is None


@pytest.mark.parametrize("shared", ["mask", "training", "both"])
def test_stores_sharing_a_seed_are_flagged(tmp_path: Path, shared: str) -> None:
    seeds = {"mask": ((3, 1), (3, 2)), "training": ((1, 5), (2, 5)), "both": ((4, 4), (4, 4))}[shared]
    a, b = (simulated_store(tmp_path / f"{n}.h5", true_effects(), mask_seed=m, training_seed=s)
            for n, (m, s) in zip("ab", seeds))
    result = run("reliability", a, b)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    expected = {"mask": ["mask seed 3"], "training": ["training seed 5"], "both": ["mask seed 4", "training seed 4"]}
    assert len(warnings) == len(expected[shared])
    for line, what in zip(warnings, expected[shared]):
        assert f"share {what}" in line and "overstates reproducibility" in line
    assert "warning" not in result.stdout
    assert len(json.loads(run("reliability", a, b, "--json").stdout)["warnings"]) == len(expected[shared])


def _one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_mismatched_stores_are_refused_in_one_line(tmp_path: Path) -> None:
    a = simulated_store(tmp_path / "a.h5", true_effects(), mask_seed=1, training_seed=1)
    fewer = simulated_store(tmp_path / "fewer.h5", true_effects()[:12], mask_seed=2, training_seed=2)
    _one_line_error(run("reliability", a, fewer), "different source classes", "(40 vs 12")
    targets = simulated_store(tmp_path / "targets.h5", true_effects()[:, :30], mask_seed=2, training_seed=2)
    _one_line_error(run("reliability", a, targets), "different target sets", "(45 vs 30")


def test_example_level_stores_get_the_same_answers_cheaply(tmp_path: Path) -> None:
    """An example-level store: the ranking of source examples by mean influence and the example × target-class
    matrix, fitted on 1 + C reduced margin columns, equal the answers of the full (P, T) influence."""
    example = simulated_store(tmp_path / "examples.h5", true_effects(), kind="example")
    report = reliability_report(example, seeds=range(4))
    store = report.stores[0]
    assert store.kind == "example" and store.models == 160
    with RunStore(example) as opened:
        masks, margins = opened.read_rows(opened.completed_rows())
        labels = opened.target_labels
    units = np.arange(160) // 2  # antithetic pairs
    ranking, matrix = split_half_agreements(masks, margins, units, labels, 3, seeds=range(4))
    np.testing.assert_allclose(store.ranking.split.values, ranking.values, atol=1e-6)
    np.testing.assert_allclose(store.matrix.split.values, matrix.values, atol=1e-6)
    result = run("reliability", example)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    within = store.ranking
    full = reliability_report(example).stores[0].ranking
    assert lines[0].startswith("verdict: the example ranking is ")
    assert f"(split-half {full.split.mean:+.2f} ± {full.split.sd:.2f}, 160 models ≈ {full.full:.2f})" in lines[0]
    assert lines[0].endswith(f"about {int(np.ceil(full.needed['0.8'])):,} models needed for 0.8")
    assert "reliability of difference-of-means example influence" in lines and within.split.mean is not None
    assert any(line.strip().startswith("example ranking") for line in lines)
    data = json.loads(run("reliability", example, "--json").stdout)
    assert data["stores"][0]["kind"] == "example" and data["verdicts"] == [lines[0].removeprefix("verdict: ")]
    assert set(data["stores"][0]["verdicts"]) == {"ranking", "matrix"}


def test_verdict_says_when_a_ranking_is_not_reproducible(tmp_path: Path) -> None:
    """Much noise and few models: a split-half at or below 0 says so, and that no number of models can be
    extrapolated from it; with little noise the ranking is reproducible."""
    from dmtoolkit.analyze.reliability import reliability_verdict

    noisy = simulated_store(tmp_path / "noisy.h5", true_effects(), models=64, noise=30.0)
    within = reliability_report(noisy).stores[0].ranking
    assert within.split.mean <= 0  # this seed's halves disagree
    line = reliability_verdict("class ranking", within)
    assert line == (f"the class ranking is not reproducible at this store size (split-half {within.split.mean:+.2f} ± "
                    f"{within.split.sd:.2f}); a split-half at or below 0 cannot be extrapolated to the models needed: "
                    "train several times more models and rerun")
    assert run("reliability", noisy).stdout.splitlines()[0] == f"verdict: {line}"
    quiet = reliability_report(simulated_store(tmp_path / "quiet.h5", true_effects(), models=400, noise=0.2),
                               estimator="regression").stores[0]
    assert quiet.ranking.full >= 0.9 and quiet.verdicts["ranking"].startswith("the class ranking is highly reproducible")


def test_unfinished_stores_are_refused_in_one_line(tmp_path: Path) -> None:
    a = simulated_store(tmp_path / "a.h5", true_effects())
    with h5py.File(a, "r+") as f:
        f["completed"][3:] = False
    _one_line_error(run("reliability", a), "only 3 of 160 models are completed")
    bad = run("reliability", a, "--estimator", "datamodels")
    assert bad.exit_code == 2 and "Traceback" not in bad.output
