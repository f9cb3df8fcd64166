"""`dmtoolkit store import`: stores from masks and margins made elsewhere, read back as every tool reads a store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dmtoolkit import store_import
from dmtoolkit.cli import cli
from dmtoolkit.estimate import load_estimate, make_estimator
from dmtoolkit.estimate.fit import store_draws
from dmtoolkit.store import RunStore
from dmtoolkit.store_checks import validate_store

M, P, T = 64, 10, 6


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def arrays(seed: int = 0, m: int = M, antithetic: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = rng.random((m, P)) < 0.5
    if antithetic:
        masks[1::2] = ~masks[0::2]
    margins = (masks @ rng.normal(size=(P, T)) + rng.normal(size=(m, T))).astype(np.float32)
    return masks, margins


@pytest.fixture()
def npy(tmp_path: Path) -> dict[str, Path]:
    masks, margins = arrays()
    done = np.ones(M, bool)
    done[[5, 40]] = False
    margins[5] = 0.0  # what the datamodels writer leaves in rows that never ran
    paths = {name: tmp_path / f"{name}.npy" for name in ("masks", "margins", "done", "labels")}
    np.save(paths["masks"], masks.astype(np.uint8))  # 0/1 integers, as other tools write them
    np.save(paths["margins"], margins)
    np.save(paths["done"], done)
    np.save(paths["labels"], np.arange(T) % 3)
    paths["names"] = tmp_path / "names.txt"
    paths["names"].write_text("".join(f"class-{u}\n" for u in range(P)))
    return paths


def import_npy(npy: dict[str, Path], out: Path, *extra: object):
    return run("store", "import", "-o", out, "--masks", npy["masks"], "--margins", npy["margins"],
               "--completed", npy["done"], "--unit-names", npy["names"], "--target-labels", npy["labels"], *extra)


def test_imported_store_gives_the_array_level_influence(npy: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "imported.h5"
    result = import_npy(npy, out)
    assert result.exit_code == 0, result.output
    assert run("store", "validate", out).exit_code == 0
    result = run("influence", out, "-o", tmp_path / "infl.h5", "--holdout-frac", 0)
    assert result.exit_code == 0, result.output

    masks, margins, done = np.load(npy["masks"]), np.load(npy["margins"]), np.load(npy["done"])
    reference = make_estimator("difference-of-means").fit(masks[done].astype(bool), margins[done])
    est = load_estimate(tmp_path / "infl.h5")
    np.testing.assert_allclose(est.matrix, reference.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(est.stderr, reference.stderr_, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(est.fit_rows, np.flatnonzero(done))
    assert est.unit_names == [f"class-{u}" for u in range(P)]


def test_rows_not_completed_are_kept_and_provenance_recorded(npy: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "imported.h5"
    assert import_npy(npy, out).exit_code == 0
    with RunStore(out) as store:
        assert store.imported and not store.has_images and store.num_models == M
        np.testing.assert_array_equal(store.pending_rows(), [5, 40])
        assert np.isnan(store.margins[5]).all() and np.isnan(store.margins[40]).all()  # not written, not zeros
        np.testing.assert_array_equal(store.masks[()], np.load(npy["masks"]).astype(bool))
        np.testing.assert_array_equal(store.target_labels, np.arange(T) % 3)
        assert store.target_class_names == ["0", "1", "2"]
        record = store.import_record
        assert store.schema_problems() == []
    for role, key in (("masks", "masks"), ("margins", "margins"), ("completed", "done"), ("unit_names", "names")):
        assert record["files"][role]["path"] == str(npy[key].resolve())
        assert record["files"][role]["sha256"] == hashlib.sha256(npy[key].read_bytes()).hexdigest()
    with h5py.File(out) as f:
        assert f.attrs["origin"] == "imported" and f.attrs["recipe_hash"] == hashlib.sha256(
            f.attrs["import"].encode()).hexdigest()
    info = json.loads(run("store", "info", out, "--json").output)
    assert info["models"] == {"completed": M - 2, "total": M} and info["imported"]["design"] == "random"
    assert "imported" in run("store", "info", out).output


def test_pending_rows_of_an_imported_store_can_be_written(npy: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "imported.h5"
    assert import_npy(npy, out).exit_code == 0
    with RunStore(out, writable=True) as store:
        store.write_row(5, np.ones(T), seed=3, source_accuracy=np.nan, target_accuracy=1.0, seconds=1.0)
    assert validate_store(out) == []
    with RunStore(out) as store:
        np.testing.assert_array_equal(store.pending_rows(), [40])


def test_npz_and_folder_give_the_same_store(tmp_path: Path) -> None:
    masks, margins = arrays(1)
    done = np.ones(M, bool)
    done[-1] = False
    names = np.array([f"ex{u}" for u in range(P)])
    np.savez(tmp_path / "runs.npz", masks=masks, margins=margins, completed=done, unit_names=names)
    folder = tmp_path / "logdir"
    folder.mkdir()
    np.save(folder / "masks.npy", masks)
    np.save(folder / "margins.npy", margins)
    np.save(folder / "_completed.npy", done)
    (tmp_path / "names.txt").write_text("\n".join(names))
    assert run("store", "import", "-o", tmp_path / "a.h5", "--npz", tmp_path / "runs.npz", "--kind", "example"
               ).exit_code == 0
    result = run("store", "import", "-o", tmp_path / "b.h5", "--folder", folder, "--kind", "example",
                 "--unit-names", tmp_path / "names.txt")
    assert result.exit_code == 0, result.output
    for name in ("a.h5", "b.h5"):
        assert validate_store(tmp_path / name) == []
        with RunStore(tmp_path / name) as store:
            assert store.kind == "example" and store.source_example_ids == list(names)
            np.testing.assert_array_equal(store.completed_mask(), done)
            np.testing.assert_array_equal(store.margins[:-1], margins[:-1])
            assert store.content_hash()  # the hash estimates record is computable
    with RunStore(tmp_path / "a.h5") as a, RunStore(tmp_path / "b.h5") as b:
        np.testing.assert_array_equal(a.masks[()], b.masks[()])


def test_big_inputs_are_copied_in_blocks_from_memmaps(npy: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_import, "BLOCK_ELEMENTS", 1)  # one ROW_CHUNK of rows per block
    loaded = store_import.read_npy(npy["margins"], "margins")
    assert isinstance(loaded, np.memmap)
    masks, margins = arrays(2, m=200)
    out = store_import.import_store(tmp_path / "big.h5", store_import.ImportArrays(masks, margins))
    with RunStore(out) as store:
        np.testing.assert_array_equal(store.masks[()], masks)
        np.testing.assert_array_equal(store.margins[()], margins)
        np.testing.assert_allclose(store.column("target_accuracy"), (margins > 0).mean(axis=1), rtol=1e-6)


def test_antithetic_design_is_checked_and_gives_pair_units(tmp_path: Path) -> None:
    masks, margins = arrays(3, antithetic=True)
    np.save(tmp_path / "masks.npy", masks)
    np.save(tmp_path / "margins.npy", margins)
    out = tmp_path / "pairs.h5"
    assert run("store", "import", "-o", out, "--masks", tmp_path / "masks.npy", "--margins", tmp_path / "margins.npy",
               "--design", "antithetic").exit_code == 0
    assert validate_store(out) == []
    with RunStore(out) as store:
        draws = store_draws(store)
        np.testing.assert_array_equal(draws.ids, np.arange(M) // 2)
    plain = tmp_path / "plain.h5"
    assert run("store", "import", "-o", plain, "--masks", tmp_path / "masks.npy", "--margins",
               tmp_path / "margins.npy").exit_code == 0
    with RunStore(plain) as store:  # complementary pairs are not assumed unless the user says so
        assert store_draws(store).singletons

    masks[3] = masks[2]
    np.save(tmp_path / "masks.npy", masks)
    result = run("store", "import", "-o", tmp_path / "bad.h5", "--masks", tmp_path / "masks.npy", "--margins",
                 tmp_path / "margins.npy", "--design", "antithetic")
    assert result.exit_code == 1 and "rows 2 and 3 are not complementary" in result.output
    assert not (tmp_path / "bad.h5").exists()


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[object], str]]:
    masks, margins = arrays(4)
    save = lambda name, value: (np.save(tmp_path / name, value), tmp_path / name)[1]  # noqa: E731
    good_masks, good_margins = save("masks.npy", masks), save("margins.npy", margins)
    nan_margins = margins.copy()
    nan_margins[7, 2] = np.nan
    not01 = masks.astype(np.int64)
    not01[3, 1] = 2
    np.savez(tmp_path / "extra.npz", masks=masks, margins=margins, logits=margins)
    (tmp_path / "exists.h5").write_bytes(b"keep me")
    return {
        "shapes": (["--masks", good_masks, "--margins", save("short.npy", margins[:-1])], "masks have 64 rows"),
        "not 0/1": (["--masks", save("not01.npy", not01), "--margins", good_margins], "values other than 0/1"),
        "nan in completed": (["--masks", good_masks, "--margins", save("nan.npy", nan_margins)],
                             "row 7 is marked completed but its margins hold NaN"),
        "unknown npz key": (["--npz", tmp_path / "extra.npz"], "unknown array name(s) logits"),
        "names": (["--masks", good_masks, "--margins", good_margins, "--unit-names",
                   (tmp_path / "n.txt", (tmp_path / "n.txt").write_text("a\nb\n"))[0]], "2 unit names for 10 units"),
        "labels": (["--masks", good_masks, "--margins", good_margins, "--target-labels", save("l.npy", np.zeros(3))],
                   "target labels have shape (3,)"),
        "exists": (["--masks", good_masks, "--margins", good_margins, "-o", tmp_path / "exists.h5"],
                   "already exists; pass --force"),
        "missing": (["--folder", tmp_path / "nowhere"], "no such folder"),
        "label margins alone": (["--masks", good_masks, "--margins", good_margins, "--kind", "example",
                                 "--source-margins", save("pool.npy", np.zeros((64, 10)))],
                                "source_margins given without source_test_margins"),
        "label margins at class level": (["--masks", good_masks, "--margins", good_margins, "--source-margins",
                                          save("pool.npy", np.zeros((64, 10))), "--source-test-margins",
                                          save("test.npy", np.zeros((64, 5)))], "import them with --kind example"),
        "label margins shape": (["--masks", good_masks, "--margins", good_margins, "--kind", "example",
                                 "--source-margins", save("pool.npy", np.zeros((64, 9))), "--source-test-margins",
                                 save("test.npy", np.zeros((64, 5)))], "source margins have shape (64, 9)"),
    }


@pytest.mark.parametrize("case", ["shapes", "not 0/1", "nan in completed", "unknown npz key", "names", "labels",
                                  "exists", "missing", "label margins alone", "label margins at class level",
                                  "label margins shape"])
def test_bad_input_is_one_line_and_leaves_no_file(tmp_path: Path, case: str) -> None:
    args, message = _bad_inputs(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    out = [] if "-o" in args else ["-o", tmp_path / "out.h5"]
    result = run("store", "import", *out, *args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store, no temporary file
    if case == "exists":
        assert (tmp_path / "exists.h5").read_bytes() == b"keep me"


def test_usage_errors_name_the_inputs(tmp_path: Path) -> None:
    result = run("store", "import", "-o", tmp_path / "o.h5")
    assert result.exit_code == 2 and "give exactly one input" in result.output
    result = run("store", "import", "-o", tmp_path / "o.h5", "--masks", tmp_path / "m.npy")
    assert result.exit_code == 2 and "--masks and --margins go together" in result.output


def test_tools_that_need_a_recipe_or_images_say_so(npy: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "imported.h5"
    assert import_npy(npy, out).exit_code == 0
    assert run("influence", out, "-o", tmp_path / "infl.h5").exit_code == 0
    checks = [
        (["train", out], "an imported store has no recipe (made by `dmtoolkit store import`), which `dmtoolkit "
                         "train` needs"),
        (["subpop", tmp_path / "infl.h5", "--class", "class-0", "--png", tmp_path / "s.png"],
         "this store has no images (`dmtoolkit store import` brings masks and margins only), which `dmtoolkit "
         "subpop --png` needs"),
        (["counterfactual", "recipes/glyphs-to-mnist.yaml", "--influence", tmp_path / "infl.h5",
          "-o", tmp_path / "cf.h5"], "an imported store has no recipe (made by `dmtoolkit store import`), "
                                     "which `dmtoolkit counterfactual` needs"),
    ]
    for args, message in checks:
        result = run(*args)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.output
    assert run("subpop", tmp_path / "infl.h5", "--class", "class-0").exit_code == 0  # no images asked: fine
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "cf.h5").exists()


def test_example_store_analyses_and_report(tmp_path: Path) -> None:
    masks, margins = arrays(5)
    np.savez(tmp_path / "runs.npz", masks=masks, margins=margins, target_labels=np.arange(T) % 2)
    folder = tmp_path / "work"
    store = folder / "imported.h5"
    assert run("store", "import", "-o", store, "--npz", tmp_path / "runs.npz", "--kind", "example").exit_code == 0
    assert run("influence", store, "-o", folder / "infl.h5").exit_code == 0
    assert run("datamodels", store, "-o", folder / "dm.h5").exit_code == 0
    assert run("evaluate", store, "--estimate", folder / "dm.h5").exit_code == 0
    result = run("leakage", folder / "infl.h5")
    no_images = ("this store has no images (`dmtoolkit store import` brings masks and margins only), which `dmtoolkit "
                 "leakage` needs")
    assert result.exit_code == 1 and no_images in result.output
    assert run("mislabels", folder / "infl.h5").exit_code == 0
    result = run("report", folder, "-o", tmp_path / "report")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "index.html").read_text()
    assert no_images in page  # leakage skipped with a note, the rest is there
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["estimates"]


def test_imported_label_margins_give_the_label_check(tmp_path: Path) -> None:
    """Margins logged by other code (pool: +2 trained on, held out +1 correct / -2 flipped; 300 test images +1; noise
    0.5; row 0 not completed, row 1 gave none) import as the store contract lays them out, every estimate carries
    their label check, and `mislabels` flags the two flips; `store info` counts the rows that gave margins."""
    from dmtoolkit.estimate.label_check import read_label_check

    rng = np.random.default_rng(7)
    m, units, S, flips = 80, 12, 300, [3, 9]
    masks = rng.random((m, units)) < 0.5
    margins = (masks @ rng.normal(size=(units, T)) + rng.normal(size=(m, T))).astype(np.float32)
    held = np.where(np.isin(np.arange(units), flips), -2.0, 1.0)
    pool = np.where(masks, 2.0, held) + rng.normal(0, 0.5, (m, units))
    test = 1.0 + rng.normal(0, 0.5, (m, S))
    pool[1] = test[1] = np.nan
    done = np.ones(m, bool)
    done[0] = False
    paths = {}
    for name, value in (("masks", masks), ("margins", margins), ("done", done), ("pool", pool), ("test", test)):
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], value)
    store = tmp_path / "imported.h5"
    result = run("store", "import", "-o", store, "--masks", paths["masks"], "--margins", paths["margins"],
                 "--completed", paths["done"], "--kind", "example", "--source-margins", paths["pool"],
                 "--source-test-margins", paths["test"])
    assert result.exit_code == 0 and "stated-label margins against 300 source test images" in result.output
    assert validate_store(store) == []
    with RunStore(store) as run_store:
        stored_pool, stored_test = run_store.source_margins[()], run_store.source_test_margins[()]
        assert stored_pool.dtype == np.float16 and stored_test.shape == (m, S)
        assert np.isnan(stored_pool[:2]).all() and np.isnan(stored_test[:2]).all()  # not completed; gave none
        np.testing.assert_array_equal(stored_pool[2:], pool[2:].astype(np.float16))
        np.testing.assert_array_equal(stored_test[2:], test[2:].astype(np.float16))
        record = run_store.import_record
    assert set(record["files"]) == {"masks", "margins", "completed", "source_margins", "source_test_margins"}
    assert "label check 78 of 79 completed models recorded their source margins" in run("store", "info", store).output
    assert run("influence", store, "-o", tmp_path / "infl.h5", "--holdout-frac", "0.1").exit_code == 0
    est = load_estimate(tmp_path / "infl.h5")
    rows = np.setdiff1d(np.union1d(est.fit_rows, est.selection_rows), [0, 1])
    unseen = ~masks[rows]
    check = read_label_check(tmp_path / "infl.h5")
    expected = (unseen * stored_pool[rows].astype(np.float64)).sum(0) / unseen.sum(0)
    np.testing.assert_allclose(check.heldout_margin, expected, rtol=1e-5)
    result = run("mislabels", tmp_path / "infl.h5", "--json")
    assert result.exit_code == 0, result.output
    flagged = {c["source"] for c in json.loads(result.stdout)["flagged"]}
    assert set(flips) <= flagged and len(flagged) <= 3
