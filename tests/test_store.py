"""The run store: layout read back with h5py, durable rows, single writer, clear errors on bad files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from dmtoolkit.errors import LockError, StoreError
from dmtoolkit.lock import WriterLock, lock_path_for
from dmtoolkit.store import SCHEMA_NAME, RunStore

from .synthetic import synthetic_store


def test_layout_is_readable_with_plain_h5py(tmp_path: Path) -> None:
    margins = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    path = synthetic_store(tmp_path / "s.h5", margins, completed=np.array([1, 1, 0, 1, 0, 0], bool))
    with h5py.File(path, "r") as f:
        assert f.attrs["schema"] == SCHEMA_NAME and f.attrs["kind"] == "class"
        assert f["masks"].dtype == bool and f["masks"].shape == (6, 6)
        assert f["margins"].dtype == np.float32 and f["completed"].dtype == bool
        np.testing.assert_array_equal(f["completed"][()], [1, 1, 0, 1, 0, 0])
        np.testing.assert_array_equal(f["margins"][[0, 1, 3]], margins[[0, 1, 3]])
        assert np.isnan(f["margins"][2]).all() and np.isnan(f["target_accuracy"][2])
        for name in ("masks", "margins", "completed", "seed", "source_accuracy", "source/images", "target/labels"):
            assert f[name].attrs["meaning"], name
        assert f["masks"].attrs["axes"] == "model, unit"


def test_read_rows_keeps_requested_order(tmp_path: Path) -> None:
    margins = np.arange(40, dtype=np.float32).reshape(8, 5)
    path = synthetic_store(tmp_path / "s.h5", margins)
    with RunStore(path) as store:
        masks, got = store.read_rows(np.array([5, 1, 3]))
        np.testing.assert_array_equal(got, margins[[5, 1, 3]])
        np.testing.assert_array_equal(masks, store.file["masks"][()][[5, 1, 3]])
        blocks = list(store.iter_blocks(block_rows=3))
        assert [len(b[0]) for b in blocks] == [3, 3, 2]
        np.testing.assert_array_equal(np.concatenate([b[2] for b in blocks]), margins)


def test_content_hash_follows_completed_rows(tmp_path: Path) -> None:
    margins = np.ones((4, 3), np.float32)
    path = synthetic_store(tmp_path / "s.h5", margins, completed=np.array([1, 0, 0, 0], bool))
    with RunStore(path) as store:
        before = store.content_hash()
        assert before == store.content_hash()
    with RunStore(path, writable=True) as store:
        store.write_row(1, margins[1], seed=0, source_accuracy=1.0, target_accuracy=1.0, seconds=1.0)
    with RunStore(path) as store:
        assert store.content_hash() != before


def test_read_only_store_refuses_writes_and_bad_rows_are_refused(tmp_path: Path) -> None:
    path = synthetic_store(tmp_path / "s.h5", np.zeros((4, 3), np.float32), completed=np.zeros(4, bool))
    with RunStore(path) as store, pytest.raises(StoreError, match="opened read-only"):
        store.write_row(0, np.zeros(3), seed=0, source_accuracy=0, target_accuracy=0, seconds=0)
    with RunStore(path, writable=True) as store:
        with pytest.raises(StoreError, match="non-finite margins"):
            store.write_row(0, np.array([0, np.nan, 1]), seed=0, source_accuracy=0, target_accuracy=0, seconds=0)
        with pytest.raises(StoreError, match=r"expected \(3,\)"):
            store.write_row(0, np.zeros(4), seed=0, source_accuracy=0, target_accuracy=0, seconds=0)
        assert not store.completed_mask().any()


def test_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    path = synthetic_store(tmp_path / "s.h5", np.zeros((2, 3), np.float32))
    with RunStore(path, writable=True):
        with pytest.raises(LockError) as info:
            RunStore(path, writable=True)
        assert f"pid {os.getpid()}" in str(info.value) and "another writer" in str(info.value)
        with RunStore(path) as reader:  # readers are never blocked
            assert reader.num_models == 2
    RunStore(path, writable=True).close()  # released on close


def test_lock_of_a_killed_writer_is_recovered(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    code = f"from dmtoolkit.lock import WriterLock; import os; WriterLock({str(path)!r}).acquire(); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
    assert "pid" in lock_path_for(path).read_text()  # the dead holder never released it
    lock = WriterLock(path).acquire()
    assert lock.recovered_stale
    lock.release()


@pytest.mark.parametrize("content, message", [
    (None, "no such store"),
    (b"not hdf5 at all", "not an HDF5 file"),
])
def test_missing_and_non_hdf5_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "x.h5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(StoreError, match=message):
        RunStore(path)


def test_foreign_and_future_files_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(StoreError, match="not a dmtoolkit run store"):
        RunStore(foreign)
    path = synthetic_store(tmp_path / "s.h5", np.zeros((2, 3), np.float32))
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(StoreError, match="schema version 99, this dmtoolkit reads version 1"):
        RunStore(path)


def test_existing_store_is_not_overwritten_without_force(tmp_path: Path) -> None:
    path = synthetic_store(tmp_path / "s.h5", np.full((2, 3), 7, np.float32))
    from dmtoolkit.store import create_store

    with RunStore(path) as store:
        recipe, data = store.recipe, store.run_data()
    with pytest.raises(StoreError, match="already exists; pass --force"):
        create_store(path, recipe, data)
    with RunStore(path) as store:
        assert (store.file["margins"][()] == 7).all()


def test_one_schema_table_drives_create_validate_and_row_columns(tmp_path: Path) -> None:
    """create writes exactly RUN_DATASETS (planted ones only with ground truth, example-level ones only at example
    level); validate checks them all."""
    from dmtoolkit.store import ROW_COLUMNS, RUN_DATASETS
    from dmtoolkit.store_checks import validate_store

    assert ROW_COLUMNS == ("margins", "predictions", "source_margins", "source_test_margins", "seed",
                           "source_accuracy", "target_accuracy", "seconds")
    example_only = {spec.name for spec in RUN_DATASETS if spec.examples}
    assert example_only == {"source_margins", "source_test_margins"}
    margins = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    path = synthetic_store(tmp_path / "s.h5", margins)
    with h5py.File(path, "r") as f:
        written = set()
        f.visititems(lambda name, obj: written.add(name) if isinstance(obj, h5py.Dataset) else None)
        assert written == {spec.name for spec in RUN_DATASETS if not spec.planted and not spec.examples}
        for spec in RUN_DATASETS:
            if spec.name in f:
                assert f[spec.name].attrs["meaning"] and f[spec.name].attrs["axes"] == spec.axes, spec.name
    with RunStore(path) as store:
        assert store.schema_problems() == []
        rows = store.row_values(np.array([1, 4]))
        assert set(rows) == set(ROW_COLUMNS) - example_only  # a class-level store keeps no source margins
        np.testing.assert_array_equal(rows["margins"], margins[[1, 4]])
        np.testing.assert_array_equal(store.column("seed"), np.arange(6))
        with pytest.raises(KeyError):
            store.column("margins")  # not a per-model scalar column
    with h5py.File(path, "r+") as f:
        del f["seconds"]
        f.create_dataset("seconds", data=np.zeros(6, np.float64))
        del f["target/labels"]
        f.create_dataset("target/labels", data=np.zeros(4, np.int64))
        del f["source/example_ids"]
    assert validate_store(path) == [
        "seconds: expected float32 (6,), found float64 (6,)",
        "dataset 'source/example_ids' is missing",
        "target/labels: expected int64 (5,), found int64 (4,)",
    ]


def test_example_stores_keep_source_margins_written_read_and_checked(tmp_path: Path) -> None:
    """An example-level store has room for each model's stated-label source margins (pool and source test): they
    start NaN, `write_row` stores them (float16) and `row_values` returns them; a wrong length is refused
    without touching the row; a store made before they existed (datasets deleted) still validates, and its
    rows are written without them."""
    from dmtoolkit.errors import StoreError
    from dmtoolkit.store_checks import validate_store

    margins = np.zeros((4, 3), np.float32)
    masks = np.array([[1, 0, 1, 0, 1], [0, 1, 0, 1, 0], [1, 1, 0, 0, 1], [0, 0, 1, 1, 0]], bool)
    path = synthetic_store(tmp_path / "s.h5", margins, masks, kind="example", completed=np.zeros(4, bool),
                           masks_origin="explicit")
    with RunStore(path) as store:
        assert store.source_margins.shape == (4, 5) and store.source_margins.dtype == np.float16
        S = store.source_test_margins.shape[1]
        assert S == len(store.file["source/test_labels"]) and np.isnan(store.source_margins[()]).all()
    pool, test = np.linspace(-3, 3, 5), np.linspace(-1, 2, S)
    with RunStore(path, writable=True) as store:
        store.write_row(2, margins[2], seed=2, source_accuracy=0.5, target_accuracy=0.5, seconds=0.1,
                        source_margins=pool, source_test_margins=test)
        with pytest.raises(StoreError, match=r"row 3 has \(4,\) source_margins, expected \(5,\)"):
            store.write_row(3, margins[3], seed=3, source_accuracy=0.5, target_accuracy=0.5, seconds=0.1,
                            source_margins=pool[:4], source_test_margins=test)
        assert not store.file["completed"][3]
    with RunStore(path) as store:
        values = store.row_values(np.array([2]))
        np.testing.assert_allclose(values["source_margins"][0], pool, atol=2e-3)
        np.testing.assert_allclose(values["source_test_margins"][0], test, atol=2e-3)
        assert store.schema_problems() == []
    with h5py.File(path, "r+") as f:  # as a store made before the margins were recorded
        del f["source_margins"], f["source_test_margins"]
    assert validate_store(path) == []
    with RunStore(path, writable=True) as store:
        store.write_row(0, margins[0], seed=0, source_accuracy=0.5, target_accuracy=0.5, seconds=0.1,
                        source_margins=pool, source_test_margins=test)
        assert store.source_margins is None and store.file["completed"][0]


def test_explicit_masks_are_stored_as_given_and_validate(tmp_path: Path) -> None:
    from dmtoolkit.recipe import parse_recipe_dict
    from dmtoolkit.store import create_store
    from dmtoolkit.store_checks import validate_store

    from .synthetic import synthetic_data

    recipe = parse_recipe_dict({"name": "explicit", "source": {"dataset": "synthetic"},
                                "target": {"dataset": "synthetic"}, "subsets": {"models": 3}})
    masks = np.array([[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]], bool)  # not what seed 0 draws
    path = create_store(tmp_path / "cf.h5", recipe, synthetic_data(4, 5), masks=masks)
    with RunStore(path) as store:
        assert store.explicit_masks and (store.masks[()] == masks).all()
    assert validate_store(path) == []
    drawn = create_store(tmp_path / "drawn.h5", recipe, synthetic_data(4, 5))
    with h5py.File(drawn, "r+") as f:  # the same masks in a seeded store are a problem: they cannot be re-derived
        f["masks"][...] = masks
    assert any("re-derived from seed" in p for p in validate_store(drawn))
    with pytest.raises(StoreError, match=r"explicit masks have shape \(2, 4\), the recipe needs \(3, 4\)"):
        create_store(tmp_path / "bad.h5", recipe, synthetic_data(4, 5), masks=masks[:2])
    assert not (tmp_path / "bad.h5").exists()
