"""The label check from a run store's own models: the trainer records each model's stated-label source margins
(pool and source test), every estimate fitted on the store carries the check of its fitting models, and
`mislabels` flags from it (`dmtoolkit.estimate.label_check.store_label_check`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from dmtoolkit.estimate.label_check import PATTERN_SEED, patterns_among, read_label_check
from dmtoolkit.store import RunStore, Split, create_store

from .synthetic import planted_example_data, synthetic_recipe, trained_example_store

FLIPS = (3, 9)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 pool images, two of them flipped; 300 source test images. A model's margin on a pool image is +2 when it
    trained on it (memorised, whatever the label) and, held out, +1 for a correct label and −2 for a flipped one;
    test images +1; all with noise 0.5. Rows 0–3 are written without source margins (a trainer that gives none)."""
    tmp = tmp_path_factory.mktemp("label")
    data = planted_example_data(12, 10, leaks={}, flips=FLIPS, seed=1)
    rng = np.random.default_rng(0)
    test = Split(rng.integers(0, 256, (300, 8, 8, 1), dtype=np.uint8), rng.integers(0, 12, 300).astype(np.int64))
    data = dataclasses.replace(data, source_test=test)
    path = create_store(tmp / "runs.h5", synthetic_recipe(80, kind="example", seed=4), data)
    flipped = np.isin(np.arange(12), FLIPS)
    with RunStore(path, writable=True) as store:
        masks = store.masks[()]
        for row in range(80):
            held = np.where(flipped, -2.0, 1.0)
            pool = np.where(masks[row], 2.0, held) + rng.normal(0, 0.5, 12)
            given = dict(source_margins=pool, source_test_margins=1.0 + rng.normal(0, 0.5, 300)) if row >= 4 else {}
            store.write_row(row, rng.normal(0, 1, 10), seed=row, source_accuracy=0.5, target_accuracy=0.5,
                            seconds=0.1, **given)
    return path


def test_every_estimate_carries_the_check_of_its_fitting_models(planted: Path, tmp_path: Path) -> None:
    """The held-out margin, its count and the reference equal a NumPy reduction over the estimate's fitting rows
    that recorded margins (never its test rows)."""
    from dmtoolkit.estimate import compute_influence
    from dmtoolkit.estimate.files import load_estimate

    out = tmp_path / "influence.h5"
    compute_influence(planted, out, device="cpu", holdout_frac=0.2)
    est = load_estimate(out)
    rows = np.union1d(est.fit_rows, est.selection_rows)
    rows = rows[rows >= 4]  # rows 0-3 gave no margins
    with RunStore(planted) as store:
        masks = store.masks[()][rows]
        pool = store.source_margins[()][rows].astype(np.float64)
        test = store.source_test_margins[()][rows].astype(np.float64)
    held = ~masks
    check = read_label_check(out)
    np.testing.assert_allclose(check.heldout_margin, (held * pool).sum(0) / held.sum(0), rtol=1e-5)
    np.testing.assert_array_equal(check.heldout_networks, held.sum(0))
    patterns = patterns_among(held.any(0), 300, PATTERN_SEED)
    reference = np.array([test[held[:, p], k].mean() for k, p in enumerate(patterns)])
    np.testing.assert_allclose(check.reference, reference, rtol=1e-5)
    assert not np.isin(est.test_rows, rows).any()


def test_mislabels_flags_the_flips_from_a_subset_estimate(planted: Path, tmp_path: Path) -> None:
    """Held out, the flips disagree with their labels more than any test image: both are flagged and listed
    first; the flagged set is Benjamini–Hochberg's at 5% over the check's conformal p-values (computed here with
    SciPy; ordinary images may pass too, at the false discovery rate); the CLI flags the same."""
    import json

    from click.testing import CliRunner

    from dmtoolkit.analyze import detect_mislabels
    from dmtoolkit.cli import cli
    from dmtoolkit.estimate import compute_influence

    out = tmp_path / "influence.h5"
    compute_influence(planted, out, device="cpu", holdout_frac=0.1)
    from scipy.stats import false_discovery_control

    report = detect_mislabels(out, top=4)
    flagged = sorted(c.source for c in report.flagged)
    assert set(FLIPS) <= set(flagged) and {c.source for c in report.candidates[:2]} == set(FLIPS)
    p = read_label_check(out).pvalues()
    assert flagged == list(np.flatnonzero(false_discovery_control(p) <= 0.05))
    assert "label checked out of sample" in report.evidence and "models not trained on it" in report.evidence
    assert report.message.startswith(f"{len(flagged)} source examples likely mislabelled at FDR 5%")
    done = CliRunner().invoke(cli, ["mislabels", str(out), "--json"])
    assert done.exit_code == 0, done.output
    assert sorted(c["source"] for c in json.loads(done.stdout)["flagged"]) == flagged


def test_a_store_without_source_margins_gives_no_check(planted: Path, tmp_path: Path) -> None:
    """Rows that recorded no margins give no check; an estimate of a store whose trainer gave none has no label
    check (mislabels then tests harm, as before)."""
    from dmtoolkit.estimate import compute_influence
    from dmtoolkit.estimate.label_check import store_label_check

    from .synthetic import synthetic_store

    with RunStore(planted) as store:
        assert store_label_check(store, np.arange(4)) is None
        assert store_label_check(store, np.arange(4, 8)) is not None
    masks = np.random.default_rng(1).random((20, 6)) < 0.5
    plain = synthetic_store(tmp_path / "plain.h5", np.zeros((20, 3), np.float32), masks, kind="example",
                            masks_origin="explicit")
    compute_influence(plain, tmp_path / "plain-influence.h5", device="cpu", holdout_frac=0.0)
    assert read_label_check(tmp_path / "plain-influence.h5") is None


def test_the_builtin_trainer_records_what_the_gradient_networks_compute(tmp_path: Path) -> None:
    """A really trained example store: each row's stored source margins (float16) equal the stated-label margins of
    the same row's network retrained by the gradient path (`BuiltinNetworks`, `label_margins`)."""
    from dmtoolkit.estimate.gradient import label_margins
    from dmtoolkit.estimate.networks import BuiltinNetworks
    from dmtoolkit.train.job import RunContext

    store = trained_example_store(tmp_path / "runs.h5", models=8)
    with RunStore(store) as run:
        stored_pool, stored_test = run.source_margins[()], run.source_test_margins[()]
        assert np.isfinite(stored_pool).all() and np.isfinite(stored_test).all()
    context = RunContext.from_store(store, "cpu")
    for row in (0, 5):
        final = BuiltinNetworks(context)(context.job(row))[-1]
        pool, test = label_margins(final)
        np.testing.assert_allclose(stored_pool[row], pool, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(stored_test[row], test, rtol=2e-3, atol=2e-3)


def test_source_margins_are_the_source_network_s_also_when_the_transfer_fine_tunes_it(tmp_path: Path) -> None:
    """With `transfer.mode: full` the network is fine-tuned with a new head after source training; the recorded
    source margins are taken before that, so they equal those of the same store with a fixed-feature transfer
    (same source training, same seeds)."""
    from dmtoolkit.recipe import parse_recipe_dict
    from dmtoolkit.run.api import ensure_trained

    from .synthetic import synthetic_data

    def store(name: str, transfer: dict) -> np.ndarray:
        recipe = parse_recipe_dict({
            "name": name, "source": {"dataset": "synthetic"}, "target": {"dataset": "synthetic"},
            "subsets": {"kind": "example", "alpha": 0.5, "models": 4, "seed": 1},
            "model": {"width": 2, "hidden": 4, "resolution": 8},
            "training": {"epochs": 2, "batch_size": 4, "lr": 0.05, "models_per_batch": 2, "randomness": "shared"},
            "transfer": transfer})
        path = ensure_trained(tmp_path / f"{name}.h5", recipe, workers=1, device="cpu", progress=False,
                              data=synthetic_data(3, 16, per_class=6, seed=5)).path
        with RunStore(path) as run:
            return run.source_margins[()]

    fixed = store("fixed", {"head": "ridge", "ridge": 1.0})
    full = store("full", {"mode": "full", "epochs": 1, "batch_size": 8, "lr": 0.05})
    assert np.isfinite(fixed).all()
    np.testing.assert_array_equal(full, fixed)


def test_a_gradient_estimate_takes_the_store_models_check_over_its_few_networks(tmp_path: Path) -> None:
    """On a store that recorded source margins, the gradient estimate's label check is the store's over its
    fitting models (more of them than the networks it retrains, which are among them), not its networks' own."""
    from dmtoolkit.estimate.files import load_estimate
    from dmtoolkit.estimate.gradient import fit_gradient
    from dmtoolkit.estimate.label_check import store_label_check

    store = trained_example_store(tmp_path / "runs.h5", models=12)
    out = tmp_path / "gradient.h5"
    fit_gradient(store, out, models=2, proj_dim=16, lam=0.1, holdout_frac=0.25, seed=0)
    est = load_estimate(out)
    check = read_label_check(out)
    with RunStore(store) as run:
        expected = store_label_check(run, np.union1d(est.fit_rows, est.selection_rows))
    assert len(est.fit_rows) > 2
    np.testing.assert_allclose(check.heldout_margin, expected.heldout_margin, rtol=1e-6)
    np.testing.assert_array_equal(check.heldout_networks, expected.heldout_networks)
    np.testing.assert_allclose(check.reference, expected.reference, rtol=1e-6)
    assert check.heldout_networks.max() > 2  # more models than the 2 networks could give
