"""Shards for scheduler arrays: each array job fills its own copy of a store; `merge_stores` joins them, checked.

A shard is an ordinary run store made from the parent store's recipe and stored data (so it holds the
same recipe, seed, masks and data); job I of N computes the groups g with g % N == I into it, and only
it writes that file. The parent store is only read, so any number of jobs can start from it at once.

Merging checks that every input is the same run (recipe hash, seed, masks, data fingerprints),
refuses a row completed in two inputs with different margins (more than `DUPLICATE_TOLERANCE` apart:
the determinism bound of a rerun on CPU), keeps identical duplicates once, reports rows no input has,
and writes the result through `RunStore.write_row` into a temporary file renamed into place at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dmtoolkit.atomic import check_output, replacing
from dmtoolkit.capabilities import Capability
from dmtoolkit.errors import StoreError, UserError
from dmtoolkit.lock import lock_path_for
from dmtoolkit.store import RunStore, create_store

DUPLICATE_TOLERANCE = 1e-5
BLOCK_ROWS = 1024


def parse_shard(text: str) -> tuple[int, int]:
    """`"I/N"` -> (I, N) with 0 <= I < N; a malformed value is a one-line user error."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text!r}: write it as I/N with 0 <= I < N, e.g. --shard 3/16")
    return i, n


def _same_run_problem(a: RunStore, b: RunStore) -> str | None:
    """Why two stores are not the same run (None when they are)."""
    if a.recipe_hash != b.recipe_hash:
        return "different recipe hash"
    if a.seed != b.seed:
        return f"different mask seed ({a.seed} vs {b.seed})"
    if a.masks.shape != b.masks.shape or a.margins.shape != b.margins.shape:
        return "different shapes of masks or margins"
    if not np.array_equal(a.masks[()], b.masks[()]):
        return "different masks"
    if a.fingerprints != b.fingerprints:
        return "different data (dataset fingerprints differ)"
    return None


def open_shard(store_path: str | Path, shard_path: str | Path) -> Path:
    """The shard file for a job: created from the parent store if missing, else checked to be of the same run."""
    store_path, shard_path = Path(store_path), Path(shard_path)
    if store_path.resolve() == shard_path.resolve():
        raise UserError(f"{shard_path}: the shard file must differ from the store it comes from")
    check_output(shard_path, force=True, inputs=(store_path,))  # a regular file (resumed) or absent (created)
    with RunStore(store_path) as parent:
        parent.require(Capability.RECIPE, "train --shard")
        if not os.path.lexists(shard_path):
            create_store(shard_path, parent.recipe, parent.run_data(), inputs=(store_path,))
        with RunStore(shard_path) as shard:
            problem = _same_run_problem(parent, shard)
    if problem:
        raise StoreError(f"{shard_path}: not a shard of {store_path} ({problem}); use another -o path")
    return shard_path


def _ranges(rows: np.ndarray) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8" (at most 20 ranges shown)."""
    if len(rows) == 0:
        return ""
    breaks = np.flatnonzero(np.diff(rows) != 1)
    starts = np.concatenate([[rows[0]], rows[breaks + 1]])
    ends = np.concatenate([rows[breaks], [rows[-1]]])
    parts = [f"{s}-{e}" if e > s else f"{s}" for s, e in zip(starts, ends)]
    more = f", ... (+{len(parts) - 20} more ranges)" if len(parts) > 20 else ""
    return ", ".join(parts[:20]) + more


@dataclass
class MergeSummary:
    output: Path
    inputs: int
    completed: int = 0
    duplicates: int = 0
    missing: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def missing_text(self) -> str:
        return _ranges(self.missing)


def merge_stores(inputs: list[str | Path], output: str | Path, *, force: bool = False) -> MergeSummary:
    """Merge shards (or any stores of the same run) into `output`; refuses mismatched runs and conflicting rows."""
    inputs, output = [Path(p) for p in inputs], Path(output)
    if not inputs:
        raise UserError("store merge: give at least one input store")
    check_output(output, force=force, inputs=inputs)
    stores: list[RunStore] = []
    try:
        for path in inputs:
            stores.append(RunStore(path))
        first = stores[0]
        first.require(Capability.RECIPE, "store merge")  # the merged store is created from its recipe and data
        for store in stores[1:]:
            problem = _same_run_problem(first, store)
            if problem:
                raise StoreError(f"{store.path}: not the same run as {first.path} ({problem}); refusing to merge")
        owner, duplicates = _owners_checked(stores)
        summary = _write_merged(stores, owner, output, force=force, inputs=inputs)
    finally:
        for store in stores:
            store.close()
    summary.duplicates = duplicates
    return summary


def _owners_checked(stores: list[RunStore]) -> tuple[np.ndarray, int]:
    """For each row, the first input holding it completed (-1: none); conflicting duplicates raise."""
    m = stores[0].num_models
    owner = np.full(m, -1, dtype=np.int64)
    duplicates = 0
    for k, store in enumerate(stores):
        done = store.completed_mask()
        again = np.flatnonzero(done & (owner >= 0))
        for j in np.unique(owner[again]):
            rows = again[owner[again] == j]
            for start in range(0, len(rows), BLOCK_ROWS):
                block = rows[start:start + BLOCK_ROWS]
                a, b = stores[j].margins[block], store.margins[block]
                gap = np.abs(a.astype(np.float64) - b).max(axis=1)
                bad = np.flatnonzero(~(gap <= DUPLICATE_TOLERANCE))
                if len(bad):
                    row = int(block[bad[0]])
                    raise StoreError(
                        f"conflicting rows: row {row} is completed in both {stores[j].path} and {store.path} with "
                        f"different margins (max difference {gap[bad[0]]:.3g}; {len(bad)} such row(s) in this block); "
                        f"refusing to merge: drop one of the two inputs or recompute it")
        duplicates += len(again)
        owner[done & (owner < 0)] = k
    return owner, duplicates


def _write_merged(stores: list[RunStore], owner: np.ndarray, output: Path, *, force: bool,
                  inputs: list[Path]) -> MergeSummary:
    first = stores[0]
    with replacing(output, force=force, inputs=inputs, suffix=".merge.h5") as tmp:  # locks an existing output
        try:
            create_store(tmp, first.recipe, first.run_data(), force=True)
            with RunStore(tmp, writable=True) as merged:
                problem = _same_run_problem(first, merged)
                if problem:
                    raise StoreError(f"{first.path}: its masks are not those its recipe draws ({problem}); cannot merge")
                for k, store in enumerate(stores):
                    rows = np.flatnonzero(owner == k)
                    for start in range(0, len(rows), BLOCK_ROWS):
                        block = rows[start:start + BLOCK_ROWS]
                        columns = store.row_values(block)  # every row column of the schema table
                        for r, row in enumerate(block):
                            merged.write_row(int(row), **{name: values[r] for name, values in columns.items()})
        finally:
            lock_path_for(tmp).unlink(missing_ok=True)
    return MergeSummary(output, len(stores), completed=int((owner >= 0).sum()), missing=np.flatnonzero(owner < 0))
