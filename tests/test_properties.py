"""Property tests of the run store (masks have their own in test_masks.py).

* round trip: whatever finite margins `RunStore.write_row` takes, in whatever order, read back bit for bit;
  rows never written stay NaN and pending;
* `content_hash`: a function of the content only (same after reopening, same for two files holding the
  same rows written in different orders), and it changes when a row is added or a completed value changes;
* `read_rows` / `iter_blocks`: any rows in any order (duplicates too) come back in that order; blocks
  cover the requested rows exactly once, in order, each at most `block_rows` long.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmtoolkit.errors import StoreError
from dmtoolkit.recipe import parse_recipe_dict
from dmtoolkit.store import RunStore, create_store

from .synthetic import synthetic_data

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
finite32 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


def _empty_store(folder: Path, name: str, m: int, T: int, seed: int = 0) -> Path:
    recipe = parse_recipe_dict({"name": "props", "source": {"dataset": "synthetic"}, "target": {"dataset": "synthetic"},
                                "subsets": {"kind": "class", "alpha": 0.5, "models": m, "seed": seed}})
    return create_store(folder / name, recipe, synthetic_data(5, T, seed=0))


@st.composite
def filled_rows(draw: st.DrawFn) -> tuple[np.ndarray, list[int]]:
    """(margins (m, T), the rows to write in the order to write them)."""
    m, T = draw(st.integers(2, 9)), draw(st.integers(1, 7))
    margins = np.array(draw(st.lists(finite32, min_size=m * T, max_size=m * T)), np.float32).reshape(m, T)
    rows = draw(st.permutations(range(m)))[: draw(st.integers(0, m))]
    return margins, list(rows)


def _write(store: RunStore, rows: list[int], margins: np.ndarray) -> None:
    for i in rows:
        store.write_row(i, margins[i], seed=100 + i, source_accuracy=i / 10, target_accuracy=1 - i / 10, seconds=float(i))


@SETTINGS
@given(case=filled_rows())
def test_rows_round_trip_bit_for_bit(case: tuple[np.ndarray, list[int]]) -> None:
    margins, rows = case
    m, T = margins.shape
    with tempfile.TemporaryDirectory() as tmp:
        path = _empty_store(Path(tmp), "s.h5", m, T)
        with RunStore(path, writable=True) as store:
            _write(store, rows, margins)
        with RunStore(path) as store:
            done = np.zeros(m, bool)
            done[rows] = True
            np.testing.assert_array_equal(store.completed_mask(), done)
            np.testing.assert_array_equal(store.completed_rows(), np.flatnonzero(done))
            np.testing.assert_array_equal(store.pending_rows(), np.flatnonzero(~done))
            got = store.file["margins"][()]
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got[done].view(np.uint32), margins[done].view(np.uint32))  # bit for bit
            assert np.isnan(got[~done]).all()
            np.testing.assert_array_equal(store.file["seed"][()][done], 100 + np.flatnonzero(done))
            np.testing.assert_array_equal(store.file["seed"][()][~done], -1)
            np.testing.assert_array_equal(store.file["seconds"][()][done], np.flatnonzero(done).astype(np.float32))


@SETTINGS
@given(case=filled_rows(), data=st.data())
def test_content_hash_depends_on_content_only(case: tuple[np.ndarray, list[int]], data: st.DataObject) -> None:
    margins, rows = case
    m, T = margins.shape
    with tempfile.TemporaryDirectory() as tmp:
        a, b = _empty_store(Path(tmp), "a.h5", m, T), _empty_store(Path(tmp), "b.h5", m, T)
        other_order = data.draw(st.permutations(rows))
        with RunStore(a, writable=True) as store:
            _write(store, rows, margins)
            hash_while_writing = store.content_hash()
        with RunStore(b, writable=True) as store:
            _write(store, other_order, margins)
        with RunStore(a) as store:
            first = store.content_hash()
        with RunStore(a) as store:
            assert store.content_hash() == first == hash_while_writing  # reopening changes nothing
        with RunStore(b) as store:
            assert store.content_hash() == first  # another file, other write order, same rows
        pending = sorted(set(range(m)) - set(rows))
        if pending:  # a new row changes it
            with RunStore(a, writable=True) as store:
                _write(store, [pending[0]], margins)
                assert store.content_hash() != first
        if rows:  # so does any change to a completed margin, however small
            i, j = rows[0], data.draw(st.integers(0, T - 1))
            with h5py.File(b, "r+") as f:
                f["margins"][i, j] = np.nextafter(margins[i, j], np.float32(np.inf), dtype=np.float32)
            with RunStore(b) as store:
                assert store.content_hash() != first


def test_content_hash_depends_on_the_recipe(tmp_path: Path) -> None:
    a, b = _empty_store(tmp_path, "a.h5", 4, 3, seed=0), _empty_store(tmp_path, "b.h5", 4, 3, seed=1)
    with RunStore(a) as sa, RunStore(b) as sb:
        assert sa.content_hash() != sb.content_hash()


@st.composite
def block_case(draw: st.DrawFn) -> tuple[int, np.ndarray, np.ndarray | None, int]:
    """(m, completed mask, explicit rows or None, block_rows)."""
    m = draw(st.integers(2, 12))
    done = np.array(draw(st.lists(st.booleans(), min_size=m, max_size=m)), bool)
    explicit = draw(st.none() | st.lists(st.integers(0, m - 1), max_size=2 * m))
    rows = None if explicit is None else np.array(explicit, np.int64)
    return m, done, rows, draw(st.integers(1, m + 3))


@settings(max_examples=40, deadline=None)
@given(case=block_case())
def test_iter_blocks_order_and_coverage(case: tuple[int, np.ndarray, np.ndarray | None, int]) -> None:
    m, done, rows, block_rows = case
    T = 3
    margins = np.arange(m * T, dtype=np.float32).reshape(m, T)
    with tempfile.TemporaryDirectory() as tmp:
        path = _empty_store(Path(tmp), "s.h5", m, T)
        with RunStore(path, writable=True) as store:
            _write(store, list(np.flatnonzero(done)), margins)
        with RunStore(path) as store:
            all_masks, all_margins = store.file["masks"][()], store.file["margins"][()]
            expected = np.flatnonzero(done) if rows is None else rows
            blocks = list(store.iter_blocks(rows, block_rows=block_rows))
            sizes = [len(b[0]) for b in blocks]
            assert all(0 < s <= block_rows for s in sizes) and all(s == block_rows for s in sizes[:-1])
            assert len(blocks) == -(-len(expected) // block_rows)
            got = np.concatenate([b[0] for b in blocks]) if blocks else np.zeros(0, np.int64)
            np.testing.assert_array_equal(got, expected)  # every requested row once, in the requested order
            for block, masks, block_margins in blocks:
                assert masks.dtype == bool and masks.shape == (len(block), all_masks.shape[1])
                np.testing.assert_array_equal(masks, all_masks[block])
                np.testing.assert_array_equal(block_margins, all_margins[block])  # NaN rows compare equal too
                if rows is None:
                    np.testing.assert_array_equal(block_margins, margins[block])
            for bad in (-1, m):
                with pytest.raises(StoreError, match=f"row {bad} out of range"):
                    store.read_rows(np.array([0, bad]))
