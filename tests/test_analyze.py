"""rank, subpop, explain, leakage, mislabels on tiny synthetic stores, checked against plain NumPy."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dmtoolkit.analyze import (
    detect_leakage,
    detect_mislabels,
    explain_target,
    near_duplicate_scores,
    rank_classes,
    subpopulation,
)
from dmtoolkit.cli import cli
from dmtoolkit.errors import UserError
from dmtoolkit.report.figures import leakage_figure, rank_figure, subpop_figure
from dmtoolkit.stats.detection import two_way_z
from dmtoolkit.stats.ranking import top_pairs
from dmtoolkit.store import RunStore

P = 6  # classes of the `class_files` store (tests/conftest.py)


def diff_of_means(masks: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """Independent difference of means, (P, T)."""
    return np.stack([margins[masks[:, k]].mean(0) - margins[~masks[:, k]].mean(0) for k in range(masks.shape[1])])


# rank ----------------------------------------------------------------------------------------------
def test_rank_matches_numpy(class_files: tuple[Path, Path], tmp_path: Path) -> None:
    store, infl = class_files
    with RunStore(store) as run:
        masks, margins = run.read_rows(run.completed_rows())
    expected = diff_of_means(masks, margins.astype(np.float64)).mean(1)
    png = tmp_path / "rank.png"
    result = rank_classes(infl, top=2)
    assert [e.index for e in result.overall] == list(np.argsort(-expected, kind="stable"))
    np.testing.assert_allclose([e.influence for e in result.overall], np.sort(expected)[::-1], atol=1e-5)
    assert [e.name for e in result.top] == ["c1", result.overall[1].name]
    assert result.bottom[0].name == "c4"
    assert rank_figure(result, png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rank_target_class_matches_numpy(class_files: tuple[Path, Path]) -> None:
    store, infl = class_files
    with RunStore(store) as run:
        labels = run.file["target/labels"][()]
        names = run.strings("target/class_names")
    with h5py.File(infl) as f:
        matrix = f["coef"][()]
    result = rank_classes(infl, target_class=names[labels[0]])
    columns = labels == labels[0]
    expected = matrix[:, columns].mean(1)
    got = {e.index: e.influence for e in result.overall}
    np.testing.assert_allclose([got[k] for k in range(P)], expected, rtol=1e-6)
    assert result.targets == int(columns.sum())


def test_rank_cli_json_and_errors(class_files: tuple[Path, Path], tmp_path: Path) -> None:
    _, infl = class_files
    runner = CliRunner()
    out = runner.invoke(cli, ["rank", str(infl), "--top", "3", "--json", "--png", str(tmp_path / "r.png")])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["top"][0]["name"] == "c1" and len(data["bottom"]) == 3
    assert (tmp_path / "r.png").exists()
    text = runner.invoke(cli, ["rank", str(infl)])
    assert text.exit_code == 0 and "most negative first (≥ 0: helps least):" in text.output and "c4" in text.output
    bad = runner.invoke(cli, ["rank", str(infl), "--target-class", "nope"])
    assert bad.exit_code == 1 and "target class 'nope' has no target examples" in bad.output
    missing = runner.invoke(cli, ["rank", str(tmp_path / "none.h5")])
    assert missing.exit_code == 1 and "no such estimate file" in missing.output
    notes = tmp_path / "x.h5"
    notes.write_text("hello")
    assert "not an HDF5 file" in runner.invoke(cli, ["rank", str(notes)]).output


def test_rank_refuses_example_level(example_files: dict) -> None:
    with pytest.raises(UserError, match="needs class-level estimates"):
        rank_classes(example_files["influence"])


# subpop and explain --------------------------------------------------------------------------------
def test_subpop_matches_numpy_and_writes_grid(class_files: tuple[Path, Path], tmp_path: Path) -> None:
    store, infl = class_files
    with h5py.File(infl) as f:
        row = f["coef"][1]
    result = subpopulation(infl, "c1", n=4, with_images=True)
    assert [t.target for t in result.targets] == list(np.argsort(-row, kind="stable")[:4])
    assert sorted(t.target for t in result.targets) == [0, 1, 2, 3]
    with RunStore(store) as run:
        np.testing.assert_array_equal(result.images, run.file["target/images"][()][[t.target for t in result.targets]])
    subpop_figure(result, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    assert subpopulation(infl, "c1", n=4).images is None  # images only when asked for
    with pytest.raises(ValueError, match="with_images=True"):
        subpop_figure(subpopulation(infl, "c1", n=4))
    out = CliRunner().invoke(cli, ["subpop", str(infl), "--class", "zz"])
    assert out.exit_code == 1 and "class 'zz' is not a source class" in out.output


def test_explain_labels_and_classes(class_files: tuple[Path, Path]) -> None:
    store, infl = class_files
    with RunStore(store) as run:
        names, labels = run.strings("target/class_names"), run.file["target/labels"][()]
    with h5py.File(infl) as f:
        column = f["coef"][:, 5]
    result = explain_target(infl, 5, top=3)
    assert result.true_label == names[labels[5]]
    assert result.predicted_label == names[2]
    assert [e.index for e in result.most_negative] == list(np.argsort(column, kind="stable")[:3])
    assert result.most_negative[0].name == "c4"
    assert result.most_positive[0].index == int(np.argmax(column))
    assert result.verify is None and "verify" not in result.to_json()
    assert explain_target(infl, 7).predicted_label is None
    runner = CliRunner()
    out = runner.invoke(cli, ["explain", str(infl), "--target", "5"])
    assert out.exit_code == 0 and f"predicted {names[2]}" in out.output and "c4" in out.output
    bad = runner.invoke(cli, ["explain", str(infl), "--target", "99"])
    assert bad.exit_code == 1 and "target 99 is not covered" in bad.output


# leakage and mislabels -----------------------------------------------------------------------------
def test_near_duplicate_scores() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    big = np.repeat(np.repeat(a, 4, axis=1), 4, axis=2)  # same images at 32x32
    other = rng.integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    same = near_duplicate_scores(a, a)
    np.testing.assert_allclose(same, 1.0, atol=1e-9)
    assert (near_duplicate_scores(a, big) > 0.9).all()
    assert (np.abs(near_duplicate_scores(a, other)) < 0.6).all()
    flat = np.zeros((1, 8, 8, 1), np.uint8)
    assert near_duplicate_scores(flat, a[:1])[0] == 0.0


def test_leakage_finds_planted_pairs(example_files: dict, tmp_path: Path) -> None:
    infl = example_files["influence"]
    with h5py.File(infl) as f:
        matrix = f["coef"][()]
    expected = diff_of_means(example_files["masks"], example_files["margins"])
    np.testing.assert_allclose(matrix, expected, atol=1e-4)
    result = detect_leakage(infl, top=2)
    assert {(p.source, p.target) for p in result.pairs} == {(2, 4), (7, 1)}
    assert all(p.pixel_score == pytest.approx(1.0) for p in result.pairs)
    assert result.to_json()["planted"] == {"k": 2, "planted_leaks": 2, "hits": 2, "precision_at_k": 1.0,
                                           "recall_at_k": 1.0, "decoys_flagged": 0}
    np.testing.assert_array_equal(result.source_images, result.target_images)  # planted copies
    wide = detect_leakage(infl, top=10, ranking="influence", all_pairs=True)
    flat = np.argsort(-expected.ravel(), kind="stable")[:10]
    assert [(p.source, p.target) for p in wide.pairs] == [tuple(map(int, np.unravel_index(i, expected.shape)))
                                                          for i in flat]
    assert wide.planted_top.precision_at_k == pytest.approx(0.2)
    assert wide.planted_top.decoys_flagged == sum(p.source == 5 for p in wide.pairs)
    # the evidence: both copies have significant influence and identical pixels, so both are flagged
    assert {(p.source, p.target) for p in result.flagged} == {(2, 4), (7, 1)}
    assert result.message.startswith("contamination: 2 source examples copy target test images (2 exact, 0 near)")
    assert "influence confirms 2 of the 2 it covers at FDR 5%" in result.message
    leakage_figure(result, tmp_path / "pairs.png")
    assert (tmp_path / "pairs.png").read_bytes()[:4] == b"\x89PNG"


def test_leakage_on_datamodels_slice(example_files: dict) -> None:
    result = detect_leakage(example_files["datamodels"], top=1)
    assert (result.pairs[0].source, result.pairs[0].target) == (2, 4)
    assert result.planted_top.planted_leaks == 2  # both leak targets (1, 4) lie in the fitted slice 0:6
    # datamodels have no standard errors: nothing is flagged by influence, but the pixel copies lead the output
    assert result.flagged == () and result.pairs[0].p_value is None
    assert [(c.source, c.target, c.confirmed) for c in result.copies] == [(2, 4, None), (7, 1, None)]
    out = CliRunner().invoke(cli, ["leakage", str(example_files["datamodels"]), "--top", "1"])
    assert out.exit_code == 0 and "precision 1.000, recall 0.500" in out.output
    lines = out.output.splitlines()
    assert lines[0].startswith("contamination: 2 source examples copy target test images (2 exact, 0 near): "
                               "ex2 = target 4 (exact copy), ex7 = target 1 (exact copy)")
    assert "source example ids to remove: ex2, ex7" in lines and "no evidence" not in out.output
    assert any(line.startswith("what the models add: nothing here, the estimate has no standard errors")
               for line in lines)


def test_leakage_default_scores_match_numpy(example_files: dict) -> None:
    with h5py.File(example_files["influence"]) as f:
        matrix = f["coef"][()].astype(np.float64)
    score = (matrix - matrix.mean(0)) / matrix.std(0)
    score += ((matrix.T - matrix.T.mean(0)) / matrix.T.std(0)).T
    best = score.argmax(1)
    expected = np.argsort(-score[np.arange(len(score)), best], kind="stable")[:5]
    result = detect_leakage(example_files["influence"], top=5)
    assert result.ranking == "two-way-z" and result.one_per_source
    assert [(p.source, p.target) for p in result.pairs] == [(int(i), int(best[i])) for i in expected]
    np.testing.assert_allclose([p.ranking_score for p in result.pairs], score[expected, best[expected]],
                               rtol=1e-5)
    assert len({p.source for p in result.pairs}) == 5


def test_two_way_z_prefers_a_copy_to_a_source_that_helps_many_targets() -> None:
    rng = np.random.default_rng(0)
    matrix = rng.normal(0, 0.01, (30, 40))
    matrix[0, :8] += 1.0   # helps eight look-alike targets (an in-distribution image, a decoy)
    matrix[1, 20] += 0.8   # helps one target far more than any other: a copy of it
    units, columns = top_pairs(matrix, 1, one_per_source=True)
    assert units[0] == 0  # raw influence flags the broad helper first
    units, columns = top_pairs(two_way_z(matrix), 1, one_per_source=True)
    assert (units[0], columns[0]) == (1, 20)
    assert list(top_pairs(matrix, 3)[0]) == [0, 0, 0] and len(set(top_pairs(matrix, 3, one_per_source=True)[0])) == 3


def test_mislabels_auc_and_precision(example_files: dict) -> None:
    worst = diff_of_means(example_files["masks"], example_files["margins"]).min(1)
    result = detect_mislabels(example_files["influence"], top=2)
    assert result.by == "worst"
    assert [c.source for c in result.candidates] == list(np.argsort(worst, kind="stable")[:2])
    np.testing.assert_allclose([c.score for c in result.candidates], np.sort(worst)[:2], atol=1e-5)
    result = detect_mislabels(example_files["influence"], top=2, by="mean")
    mean = diff_of_means(example_files["masks"], example_files["margins"]).mean(1)
    assert [c.source for c in result.candidates] == list(np.argsort(mean, kind="stable")[:2])
    assert {c.source for c in result.candidates} == {3, 9}
    assert all(c.planted_flip and c.original_label == c.label for c in result.candidates)
    flipped = np.isin(np.arange(12), [3, 9])
    pos, neg = -mean[flipped], -mean[~flipped]
    expected_auc = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert result.planted_top.auc == pytest.approx(expected_auc)
    assert result.planted_top.precision_at_k == 1.0
    # the fixture's source accuracy is constant (no evidence of harm to the source task): nothing flagged
    assert result.flagged == () and all(c.source_p == 1.0 for c in result.candidates)
    out = CliRunner().invoke(cli, ["mislabels", str(example_files["influence"]), "--top", "2", "--by", "mean",
                                   "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["planted_top"]["auc"] == pytest.approx(expected_auc)


def test_example_commands_refuse_class_level(class_files: tuple[Path, Path]) -> None:
    out = CliRunner().invoke(cli, ["leakage", str(class_files[1])])
    assert out.exit_code == 1 and "`leakage` needs example-level estimates" in out.output
    out = CliRunner().invoke(cli, ["mislabels", str(class_files[1]), "--top", "0"])
    assert out.exit_code == 2  # usage error from click


def test_missing_store_is_reported(class_files: tuple[Path, Path], tmp_path: Path) -> None:
    out = CliRunner().invoke(cli, ["explain", str(class_files[1]), "--target", "0", "--store", str(tmp_path / "no.h5")])
    assert out.exit_code == 1 and "does not exist" in out.output


def test_leakage_per_target_ranking(example_files: dict) -> None:
    with h5py.File(example_files["influence"]) as f:
        matrix = f["coef"][()].astype(np.float64)
    z = (matrix - matrix.mean(0)) / matrix.std(0)
    result = detect_leakage(example_files["influence"], top=5, ranking="target-z", all_pairs=True)
    flat = np.argsort(-z.ravel(), kind="stable")[:5]
    assert [(p.source, p.target) for p in result.pairs] == [
        tuple(map(int, np.unravel_index(i, z.shape))) for i in flat]
    np.testing.assert_allclose([p.ranking_score for p in result.pairs], z.ravel()[flat], rtol=1e-6)
    assert result.ranking == "target-z"
    out = CliRunner().invoke(cli, ["leakage", str(example_files["influence"]), "--top", "2", "--ranking", "target-z",
                                   "--all-pairs"])
    assert out.exit_code == 0 and "top 2                     2 pairs, precision 1.000" in out.output
    bad = CliRunner().invoke(cli, ["leakage", str(example_files["influence"]), "--ranking", "pixels"])
    assert bad.exit_code == 2 and "'pixels' is not one of" in bad.output
    with pytest.raises(UserError, match="ranking 'pixels' is not one of two-way-z, target-z, influence"):
        detect_leakage(example_files["influence"], ranking="pixels")
    with pytest.raises(UserError, match="by='median' is not one of worst, mean"):
        detect_mislabels(example_files["influence"], by="median")


def test_class_positions(class_files: tuple[Path, Path]) -> None:
    from dmtoolkit.analyze import class_positions

    ranking = rank_classes(class_files[1])
    positions = class_positions(class_files[1], ["c4", "c1"])
    assert positions == {"c1": 1, "c4": len(ranking.overall)}
    with pytest.raises(UserError, match="no source class named 'zz'"):
        class_positions(class_files[1], ["zz"])


def test_cli_choices_are_the_detectors_own() -> None:
    """The CLI lists its choices without importing torch; they must stay the detectors' names."""
    from dmtoolkit.analyze.leakage import LEAK_RANKINGS, LEAK_SCORERS
    from dmtoolkit.analyze.mislabels import MISLABEL_SCORES
    from dmtoolkit.analyze.options import ORDERS

    assert tuple(LEAK_SCORERS) == LEAK_RANKINGS  # one scorer per offered name

    def choices(command: str, option: str) -> list[str]:
        return next(p.type.choices for p in cli.commands[command].params if p.name == option)

    assert list(choices("leakage", "ranking")) == list(LEAK_RANKINGS)
    assert list(choices("mislabels", "by")) == list(MISLABEL_SCORES)
    assert list(choices("counterfactual", "order")) == list(ORDERS)
