"""The one way result files are written: into a temporary file renamed into place, never over a file
unless asked. A crash or Ctrl-C leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from dmtoolkit.errors import StoreError


def refuse_overwrite(out_path: str | Path, force: bool) -> None:
    """Raise unless `out_path` is free or `force` is set (checked before long work, and again when writing)."""
    if Path(out_path).exists() and not force:
        raise StoreError(f"{out_path}: already exists; pass --force to overwrite it, or choose another -o path")


@contextmanager
def replacing(out_path: str | Path, *, force: bool, fsync: bool = False, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `out_path`; when the block succeeds it is renamed over `out_path`.

    `fsync` makes the new file durable before the rename (run stores: rows are trusted after a crash).
    The temporary file is removed whatever happens; `suffix` keeps writers that insist on an extension happy.
    """
    out_path = Path(out_path)
    refuse_overwrite(out_path, force)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}{suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(out_path: str | Path, fill: Callable[[h5py.File], None], *, force: bool) -> Path:
    """Create the HDF5 file `out_path` via `fill` in a temporary file renamed into place."""
    with replacing(out_path, force=force) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            fill(f)
    return Path(out_path)
