"""Issue 29 (items 4, 6, 7): damaged stores and estimates, stale estimates, unbounded inputs and memory-deciding
options are each refused in one line (`error: ...`, exit 1, no traceback) with every file left as it was.

Each case copies a small synthetic store and its estimates into its own folder, damages one thing with h5py (or
writes a bad input), runs the real CLI in process and compares the bytes of every file before and after.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner, Result

from dmtoolkit import resources
from dmtoolkit.cli import cli
from dmtoolkit.errors import RecipeError, StoreError, UserError
from dmtoolkit.estimate import compute_influence
from dmtoolkit.estimate.ensemble import reduction_bytes
from dmtoolkit.estimate.files import load_estimate
from dmtoolkit.estimate.gradient import PROJECTION_BLOCK, gradient_memory_bytes
from dmtoolkit.recipe import MAX_RECIPE_BYTES, load_recipe, parse_recipe_dict, parse_recipe_text
from dmtoolkit.store import RunStore, create_store
from dmtoolkit.store_import import MAX_TARGET_CLASSES, import_arrays

from .conftest import SMALL_RECIPE
from .corpus import BOMB
from .synthetic import synthetic_data, synthetic_store, write_rows

M, T = 40, 5
PENDING = 37  # a row left pending when the estimates were fitted; training it makes them stale


def _influence(store: Path, out: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compute_influence(store, out, device="cpu", holdout_frac=0.2)
    return out


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs.h5 (class-level, 6 classes) with i.h5; ex.h5 (example-level, 6 examples) with ei.h5."""
    folder = tmp_path_factory.mktemp("schema")
    rng = np.random.default_rng(3)
    done = np.ones(M, bool)
    done[36:] = False
    for name, est, kind in (("runs.h5", "i.h5", "class"), ("ex.h5", "ei.h5", "example")):
        masks = rng.random((M, 6)) < 0.5
        margins = (masks @ rng.normal(size=(6, T)) + rng.normal(size=(M, T))).astype(np.float32)
        synthetic_store(folder / name, margins, masks, kind=kind, completed=done)
        _influence(folder / name, folder / est)
    return folder


def _fingerprint(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _case(originals: Path, tmp_path: Path, damage: Callable[[Path], None] | None = None) -> Path:
    """A folder holding copies of the stores and estimates (their recorded store path rewritten to the copy)."""
    folder = tmp_path / "case"
    folder.mkdir()
    for name in ("runs.h5", "i.h5", "ex.h5", "ei.h5"):
        shutil.copy(originals / name, folder / name)
    for est, store in (("i.h5", "runs.h5"), ("ei.h5", "ex.h5")):
        with h5py.File(folder / est, "r+") as f:
            f.attrs["source_store"] = str((folder / store).resolve())
    if damage is not None:
        damage(folder)
    return folder


def _refused(folder: Path, args: list[str], message: str) -> Result:
    """Run `dmtoolkit ARGS` in `folder`; assert one `error:` line holding `message`, exit 1, nothing changed."""
    before = _fingerprint(folder)
    result = CliRunner().invoke(cli, [a.format(d=folder) for a in args])
    output = result.output.strip()
    assert result.exit_code == 1, f"{args}: exit {result.exit_code}: {output}"
    assert isinstance(result.exception, SystemExit), f"{args}: {result.exception!r}"
    assert "Traceback" not in output and len(output.splitlines()) == 1, f"{args}: {output}"
    assert output.startswith("error: ") and message in output, f"{args}: {output}"
    after = _fingerprint(folder)
    for name, data in before.items():
        assert after.get(name) == data, f"{args}: {name} was changed or removed"
    new = set(after) - set(before)
    assert all(name.endswith(".lock") and not after[name] for name in new), f"{args}: new files {new}"
    return result


# --- item 7: a run store whose dataset was renamed -------------------------------------------------------------
STORE_COMMANDS = [
    ["store", "info", "{d}/runs.h5"],
    ["evaluate", "{d}/runs.h5", "--estimate", "{d}/i.h5"],
    ["reliability", "{d}/runs.h5"],
    ["influence", "{d}/runs.h5", "-o", "{d}/new.h5"],
    ["datamodels", "{d}/runs.h5", "-o", "{d}/new.h5"],
    ["train", "{d}/runs.h5", "--workers", "1", "--quiet"],
    ["rank", "{d}/i.h5"],
    ["explain", "{d}/i.h5", "--target", "0"],
    ["recommend", "{d}/i.h5"],
    ["report", "{d}", "-o", "{d}/out"],
]


@pytest.mark.parametrize("dataset", ["margins", "masks"])
@pytest.mark.parametrize("args", STORE_COMMANDS, ids=lambda a: "-".join(a[:2]).replace("{d}/", ""))
def test_a_renamed_store_dataset_is_one_line(originals: Path, tmp_path: Path, dataset: str, args: list[str]) -> None:
    def rename(folder: Path) -> None:
        with h5py.File(folder / "runs.h5", "r+") as f:
            f.move(dataset, f"{dataset}_renamed")

    folder = _case(originals, tmp_path, rename)
    _refused(folder, args, f"runs.h5: damaged run store: dataset {dataset!r} is missing")


def test_the_store_check_names_shape_and_dtype_and_validate_still_lists_every_problem(originals: Path,
                                                                                      tmp_path: Path) -> None:
    def damage(folder: Path) -> None:
        with h5py.File(folder / "runs.h5", "r+") as f:
            del f["completed"]
            f.create_dataset("completed", data=np.ones(M, np.float64))
            f.move("target/labels", "target/old_labels")

    folder = _case(originals, tmp_path, damage)
    _refused(folder, ["store", "info", "{d}/runs.h5"],
             f"completed: expected bool ({M},), found float64 ({M},) (+1 more problem); "
             f"`dmtoolkit store validate {folder}/runs.h5` lists every problem")
    result = CliRunner().invoke(cli, ["store", "validate", str(folder / "runs.h5")])
    assert result.exit_code == 1 and result.output.splitlines() == [
        f"problem: completed: expected bool ({M},), found float64 ({M},)",
        "problem: dataset 'target/labels' is missing", f"error: {folder}/runs.h5: 2 problem(s) found"]
    with pytest.raises(StoreError, match="damaged run store"):
        RunStore(folder / "runs.h5")
    with RunStore(folder / "runs.h5", check_datasets=False) as store:  # what `store validate` opens
        assert len(store.schema_problems()) == 2


def test_a_store_without_a_required_attribute_is_one_line(originals: Path, tmp_path: Path) -> None:
    def damage(folder: Path) -> None:
        with h5py.File(folder / "runs.h5", "r+") as f:
            del f.attrs["kind"]

    folder = _case(originals, tmp_path, damage)
    for args in (["store", "info", "{d}/runs.h5"], ["store", "validate", "{d}/runs.h5"], ["rank", "{d}/i.h5"]):
        _refused(folder, args, "damaged run store: attribute 'kind' is missing")


# --- item 7: an estimate whose coef was cut to 5 rows ------------------------------------------------------------
ESTIMATE_COMMANDS = [
    ["rank", "{d}/i.h5"],
    ["explain", "{d}/i.h5", "--target", "0"],
    ["subpop", "{d}/i.h5", "--class", "c0"],
    ["evaluate", "{d}/runs.h5", "--estimate", "{d}/i.h5"],
    ["recommend", "{d}/i.h5"],
    ["report", "{d}", "-o", "{d}/out"],
]


def _cut(names: tuple[str, ...]) -> Callable[[Path], None]:
    def cut(folder: Path) -> None:
        with h5py.File(folder / "i.h5", "r+") as f:
            for name in names:
                kept = f[name][:5]
                del f[name]
                f.create_dataset(name, data=kept)
    return cut


@pytest.mark.parametrize("args", ESTIMATE_COMMANDS, ids=lambda a: a[0])
def test_an_estimate_with_coef_cut_to_five_rows_is_one_line(originals: Path, tmp_path: Path, args: list[str]) -> None:
    folder = _case(originals, tmp_path, _cut(("coef",)))
    _refused(folder, args, "i.h5: damaged estimate file (coef is (5, 5) but stderr is float32 (6, 5)")


@pytest.mark.parametrize("args", ESTIMATE_COMMANDS[:5], ids=lambda a: a[0])
def test_an_estimate_cut_consistently_is_refused_against_its_store(originals: Path, tmp_path: Path,
                                                                   args: list[str]) -> None:
    """coef, stderr and unit names all cut to 5 units: self-consistent, but not the store's 6 classes."""
    folder = _case(originals, tmp_path, _cut(("coef", "stderr", "unit_names", "n_in")))
    _refused(folder, args, "i.h5 was not computed from")
    assert "the estimate has 5 units, the store 6" in CliRunner().invoke(cli, args[:1] + [
        a.format(d=folder) for a in args[1:]]).output


def test_estimate_shapes_are_checked_on_load_and_rows_against_the_store(originals: Path, tmp_path: Path) -> None:
    def damage(folder: Path) -> None:
        with h5py.File(folder / "i.h5", "r+") as f:
            del f["intercept"]
            f.create_dataset("intercept", data=np.zeros(3))
        with h5py.File(folder / "ei.h5", "r+") as f:
            test = f["rows/test"][()]
            test[0] = 999
            del f["rows/test"]
            f.create_dataset("rows/test", data=test)

    folder = _case(originals, tmp_path, damage)
    with pytest.raises(StoreError, match=r"coef is \(6, 5\) but intercept is float64 \(3,\)"):
        load_estimate(folder / "i.h5")
    assert load_estimate(folder / "ei.h5").test_rows[0] == 999  # consistent by itself: checked against the store
    _refused(folder, ["evaluate", "{d}/ex.h5", "--estimate", "{d}/ei.h5"],
             f"(the estimate names rows the store's {M} models do not have)")


# --- item 6: a stale estimate, refused by every analysis with one message --------------------------------------
def _train_one_more_row(folder: Path) -> None:
    for name in ("runs.h5", "ex.h5"):
        with RunStore(folder / name, writable=True) as store:
            store.write_row(PENDING, np.zeros(T, np.float32), seed=PENDING, source_accuracy=0.5,
                            target_accuracy=0.5, seconds=0.1)


STALE = "was not computed from {d}/{store} in its current state (content hash"
ANALYSES = [
    (["rank", "{d}/i.h5"], "runs.h5"),
    (["rank", "{d}/i.h5", "--json"], "runs.h5"),
    (["recommend", "{d}/i.h5"], "runs.h5"),
    (["subpop", "{d}/i.h5", "--class", "c0"], "runs.h5"),
    (["explain", "{d}/i.h5", "--target", "0"], "runs.h5"),
    (["evaluate", "{d}/runs.h5", "--estimate", "{d}/i.h5"], "runs.h5"),
    (["leakage", "{d}/ei.h5", "--no-features"], "ex.h5"),
    (["mislabels", "{d}/ei.h5"], "ex.h5"),
]


@pytest.mark.parametrize(("args", "store"), ANALYSES, ids=lambda a: "-".join(a) if isinstance(a, list) else a)
def test_every_analysis_refuses_a_stale_estimate_the_same_way(originals: Path, tmp_path: Path, args: list[str],
                                                              store: str) -> None:
    folder = _case(originals, tmp_path, _train_one_more_row)
    result = _refused(folder, args, STALE.format(d=folder.resolve(), store=store))
    assert "more models finished since); recompute the estimate from the store as it is now" in result.output


def test_the_report_carries_the_stale_message(originals: Path, tmp_path: Path) -> None:
    folder = _case(originals, tmp_path, _train_one_more_row)
    result = CliRunner().invoke(cli, ["report", str(folder), "-o", str(folder / "out")])
    assert result.exit_code == 0, result.output
    text = (folder / "out" / "report.json").read_text()
    assert text.count("was not computed from") >= 2 and "more models finished since" in text  # rank and LDS


def test_fresh_estimates_still_answer_and_a_moved_store_only_loses_intervals(originals: Path, tmp_path: Path) -> None:
    folder = _case(originals, tmp_path)
    for args in (["rank", str(folder / "i.h5")], ["recommend", str(folder / "i.h5")]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0 and "90% interval" in result.output, result.output
    (folder / "runs.h5").rename(folder / "away.h5")
    result = CliRunner().invoke(cli, ["rank", str(folder / "i.h5")])
    assert result.exit_code == 0 and "is not there to refit the mean" in result.output, result.output


# --- item 4 and the non-UTF-8 part of item 7: recipes -----------------------------------------------------------


def test_an_alias_bomb_recipe_is_refused_at_once(tmp_path: Path) -> None:
    (tmp_path / "bomb.yaml").write_text(BOMB)
    started = time.perf_counter()
    _refused(tmp_path, ["init", "{d}/bomb.yaml", "{d}/out.h5"],
             "bomb.yaml: YAML aliases are not allowed in recipes (line 8)")
    assert time.perf_counter() - started < 1.0
    merge = "base: &base {epochs: 1}\ntraining:\n  <<: *base\n"
    with pytest.raises(RecipeError, match=r"aliases are not allowed in recipes \(line 3\)"):
        parse_recipe_text(merge, origin="merge.yaml")


def test_anchors_without_aliases_and_ordinary_recipes_still_load(tmp_path: Path) -> None:
    import yaml

    text = yaml.safe_dump(SMALL_RECIPE, sort_keys=False).replace("training:", "training: &t", 1)
    assert parse_recipe_text(text).training == parse_recipe_dict(SMALL_RECIPE).training


@pytest.mark.parametrize(("content", "message"), [
    ("name: caf\u00e9\n".encode("latin-1"), "r.yaml: not UTF-8 text (byte 0xe9 at line 1); save the recipe as UTF-8"),
    (b"name: x\n" + b"#" * MAX_RECIPE_BYTES, "r.yaml: larger than the 64 MiB a recipe may be"),
])
def test_non_utf8_and_oversized_recipes_are_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "r.yaml").write_bytes(content)
    _refused(tmp_path, ["init", "{d}/r.yaml", "{d}/out.h5"], message)


def test_a_recipe_that_is_a_device_is_named_so(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").symlink_to("/dev/zero")
    with pytest.raises(RecipeError, match="r.yaml: is a symbolic link to /dev/zero, a character device, not a regular file"):
        load_recipe(tmp_path / "r.yaml")


# --- item 4: store import labels and unit names -------------------------------------------------------------------
def _npz(folder: Path, **extra: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    np.savez(folder / "in.npz", masks=rng.random((8, 4)) < 0.5, margins=rng.normal(size=(8, 3)).astype(np.float32),
             **extra)
    return folder / "in.npz"


@pytest.mark.parametrize(("labels", "message"), [
    (np.array([0, 1, 10**9]), f"target labels hold class index 1000000000; expected class indices 0..K-1 with at "
                              f"most {MAX_TARGET_CLASSES:,} classes"),
    (np.array([0, 1, 10**6]), "target labels hold class index 1000000"),
    (np.array([0.0, 1.0, 1e300]), "target labels hold class index 1"),
    (np.array([0, -1, 1]), "target labels hold negative values"),
])
def test_import_labels_beyond_the_class_bound_are_refused_at_once(tmp_path: Path, labels: np.ndarray,
                                                                  message: str) -> None:
    _npz(tmp_path, target_labels=labels)
    started = time.perf_counter()
    _refused(tmp_path, ["store", "import", "-o", "{d}/out.h5", "--npz", "{d}/in.npz"], message)
    assert time.perf_counter() - started < 2.0


def test_import_labels_up_to_the_bound_are_kept(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    masks, margins = rng.random((6, 3)) < 0.5, rng.normal(size=(6, 2)).astype(np.float32)
    import_arrays(tmp_path / "s.h5", masks, margins, target_labels=np.array([0, MAX_TARGET_CLASSES - 1]))
    with RunStore(tmp_path / "s.h5") as store:
        assert len(store.target_class_names) == MAX_TARGET_CLASSES and list(store.target_labels) == [0, 9999]


def test_non_utf8_or_device_unit_names_are_one_line(tmp_path: Path) -> None:
    _npz(tmp_path)
    (tmp_path / "names.txt").write_bytes(b"a\nb\n\xff\xfe\nd\n")
    (tmp_path / "zero.txt").symlink_to("/dev/zero")
    args = ["store", "import", "-o", "{d}/out.h5", "--npz", "{d}/in.npz", "--unit-names"]
    _refused(tmp_path, [*args, "{d}/names.txt"], "names.txt: not UTF-8 text (byte 0xff at line 3)")
    _refused(tmp_path, [*args, "{d}/zero.txt"], "zero.txt: is a symbolic link to /dev/zero, a character device, not a regular file")
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    _refused(tmp_path, [*args, "{d}/names.txt"], "3 unit names for 4 units")


# --- resource checks -----------------------------------------------------------------------------------------------
def test_gradient_memory_estimate_counts_the_kernel_and_the_projected_gradients() -> None:
    k, params, pool, targets = 512, 10_000, 18, 16
    projection = params * k * 4  # 20 MB: kept whole
    by_hand = projection + 4 * k * (pool + targets) + 8 * k * (2 * pool + targets) + 16 * k * k + 8 * k * targets \
        + 12 * pool * targets
    assert gradient_memory_bytes(k, params, pool, targets) == by_hand
    big = gradient_memory_bytes(10**9, 10**6, 1000, 100)
    assert big > 16 * 10**18 and big - 16 * 10**18 - PROJECTION_BLOCK * 10**9 * 4 < 10**16  # the k x k kernel
    # no projection, pool smaller than the parameters: the dual form, gradients and P x P Gram matrices, no p x p kernel
    dual = 4 * params * (pool + targets) + 8 * params * (pool + targets) + 24 * pool**2 + 36 * pool * targets
    assert gradient_memory_bytes(0, params, pool, targets) == max(dual, reduction_bytes(pool, targets))
    assert gradient_memory_bytes(0, 300, 400, targets) >= 16 * 300**2  # more examples than parameters: k = p


def test_require_memory_names_the_need_the_limit_and_the_flag() -> None:
    resources.require_memory(100, what="x", flag="lower --x", available=100)
    with pytest.raises(UserError, match=r"^gradient: k needs about 256 GiB of memory, more than the 8 GiB available; "
                                        r"lower --proj-dim$"):
        resources.require_memory(256 * 2**30, what="gradient: k", flag="lower --proj-dim", available=8 * 2**30)
    assert 0 < resources.available_memory() <= 2**60


@pytest.fixture(scope="module")
def example_recipe_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An example-level store of the built-in trainer (tiny CNN), rows written directly (no training)."""
    path = tmp_path_factory.mktemp("grad") / "ex.h5"
    recipe = parse_recipe_dict({
        "name": "tiny-examples", "source": {"dataset": "synthetic"}, "target": {"dataset": "synthetic"},
        "subsets": {"kind": "example", "alpha": 0.5, "models": 8, "seed": 1},
        "model": {"width": 2, "hidden": 4, "resolution": 8},
        "training": {"epochs": 1, "batch_size": 4, "lr": 0.05, "models_per_batch": 4},
        "transfer": {"head": "ridge", "ridge": 1.0},
    })
    create_store(path, recipe, synthetic_data(3, 16, per_class=6, seed=5))
    margins = np.stack([np.random.default_rng(i).normal(size=16) for i in range(8)]).astype(np.float32)
    return write_rows(path, margins)


def test_gradient_with_a_huge_projection_is_refused_before_allocating(example_recipe_store: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(example_recipe_store, tmp_path / "ex.h5")
    trained: list[object] = []
    from dmtoolkit.train.job import BuiltinTrainer

    monkeypatch.setattr(BuiltinTrainer, "train_source_models", lambda *a, **k: trained.append(a))
    _refused(tmp_path, ["gradient", "{d}/ex.h5", "-o", "{d}/g.h5", "--proj-dim", "1000000000", "--models", "1",
                        "--device", "cpu"],
             "gradient: projection dimension 1,000,000,000 with 18 pool examples and 16 targets needs about")
    result = CliRunner().invoke(cli, ["gradient", str(tmp_path / "ex.h5"), "-o", str(tmp_path / "g.h5"),
                                      "--proj-dim", "1000000000", "--models", "1", "--device", "cpu"])
    assert "EiB of memory, more than the" in result.output and "; lower --proj-dim (e.g. 512)" in result.output
    assert trained == []  # refused before any network was trained


def test_estimators_refuse_units_times_targets_beyond_memory(originals: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _case(originals, tmp_path)
    monkeypatch.setattr(resources, "available_memory", lambda device=None: 6 * T * 16 - 1)
    _refused(folder, ["influence", "{d}/runs.h5", "-o", "{d}/new.h5"],
             "difference-of-means: the 6 × 5 unit × target matrices needs about 480 B of memory, more than the "
             "479 B available; fit fewer target examples at a time with --targets A:B")
    result = CliRunner().invoke(cli, ["influence", str(folder / "runs.h5"), "-o", str(folder / "new.h5"),
                                      "--targets", "0:4"])
    assert result.exit_code == 0, result.output
    assert json.loads(json.dumps(load_estimate(folder / "new.h5").matrix.shape)) == [6, 4]


def test_a_damaged_beton_sidecar_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("ffcv")
    from dmtoolkit.data import load_dataset
    from dmtoolkit.data.beton import beton_info, sidecar_path, write_beton
    from dmtoolkit.errors import DataError

    dataset = load_dataset("digits", "test")
    beton = write_beton(dataset, tmp_path / "digits.beton")
    assert beton_info(beton).class_names == tuple(dataset.class_names)
    sidecar = sidecar_path(beton)
    for content, message in ((b'{"format": "\xff"}', "not UTF-8 text (byte 0xff at line 1)"),
                             (b"[1, 2]", "not a beton sidecar"), (b'{"format": 1}', "not a beton sidecar")):
        sidecar.write_bytes(content)
        with pytest.raises(DataError, match=re.escape(message)):
            beton_info(beton)


def test_an_opened_estimate_refuses_a_stale_store_and_reads_on_without_a_missing_one(originals: Path,
                                                                                       tmp_path: Path) -> None:
    from dmtoolkit.analyze.estimates import open_estimate

    folder = _case(originals, tmp_path)
    with open_estimate(folder / "i.h5") as opened:  # fresh: nothing to say
        assert opened.run().num_units == 6
    _train_one_more_row(folder)
    for call in (lambda: open_estimate(folder / "i.h5").run(required=False),
                 lambda: open_estimate(folder / "i.h5", folder / "runs.h5").run()):
        with pytest.raises(StoreError, match=r"i\.h5 was not computed from .*more models finished since"):
            call()
    (folder / "runs.h5").rename(folder / "away.h5")
    with open_estimate(folder / "i.h5") as opened:  # not there: nothing can be checked (rank and recommend then
        assert opened.run(required=False) is None   # show no intervals), and what needs it says so
        with pytest.raises(StoreError, match="does not exist"):
            opened.run()


def test_datamodels_refuses_units_squared_beyond_memory(originals: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _case(originals, tmp_path)
    from dmtoolkit.estimate.lasso import LassoPath

    assert LassoPath().memory_bytes(6, 1) == 8 * 36 + 28 * 6  # the P x P Gram matrices do not shrink with --targets
    monkeypatch.setattr(resources, "available_memory", lambda device=None: 400)
    _refused(folder, ["datamodels", "{d}/runs.h5", "-o", "{d}/new.h5", "--targets", "0:1"],
             "datamodels with 6 units needs about 456 B of memory, more than the 400 B available; use a "
             "class-level store, or the difference-of-means estimator (`dmtoolkit influence`)")


def test_a_large_own_data_recipe_parses_from_a_store() -> None:
    """A trainer's own data may name 200,000 units (a 2.5 MB recipe): the store's own recipe text is parsed whatever
    its size (files are bounded where they are read, at 64 MiB)."""
    import yaml

    names = [f"example-{i:06d}" for i in range(200_000)]
    text = yaml.safe_dump({"name": "big", "trainer": "mymod:train",
                           "subsets": {"kind": "example", "alpha": 0.5, "models": 4, "seed": 0},
                           "own_data": {"unit_names": names, "target_labels": [0, 1]}})
    assert len(text) > 2 << 20
    assert parse_recipe_text(text, origin="store").own_data.unit_names[-1] == "example-199999"


def test_the_stale_message_suggests_the_command_that_made_the_estimate() -> None:
    from dmtoolkit.estimate.files import stale_estimate_message

    def suggested(estimator: str) -> str:
        return stale_estimate_message(Path("e.h5"), Path("r.h5"), "why", estimator).split("`")[1]

    assert suggested("datamodels") == "dmtoolkit datamodels r.h5 -o e.h5 --force"
    assert suggested("replay") == "dmtoolkit replay r.h5 -o e.h5 --force"
    assert suggested("regression") == "dmtoolkit influence r.h5 -o e.h5 --estimator regression --force"
    assert suggested("difference-of-means") == "dmtoolkit influence r.h5 -o e.h5 --force"
