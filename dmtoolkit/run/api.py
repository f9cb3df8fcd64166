"""`dm.train`: train the pending rows of a store from Python, exactly as `dmtoolkit train` does.

The same path as the CLI: the recipe's trainer through an executor (`make_executor`) and the driver
(`train_store`), which holds the store's lock, draws every model's seed from the store's own recipe
(`trainer.seed`, `randomness`), writes rows as they arrive and resumes where it stopped. A notebook never
writes the loop over `pending_rows()` or picks seeds itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from dmtoolkit.devices import resolve_device
from dmtoolkit.errors import ParameterError
from dmtoolkit.run.driver import TrainSummary, train_store
from dmtoolkit.run.executors import make_executor
from dmtoolkit.run.options import DEFAULT_EXECUTOR, EXECUTOR_NAMES
from dmtoolkit.store import RunStore


def train(store: str | Path | RunStore, *, workers: int | None = None, limit: int | None = None,
          device: str | None = None, progress: bool = True, executor: str = DEFAULT_EXECUTOR,
          address: str | None = None, timeout: float | None = None) -> TrainSummary:
    """Train, transfer and score the pending models of `store` (a path, or a `RunStore` whose path is used).

    workers: worker processes (default: the number of CPUs, as the CLI; 1 computes in this process);
    limit: stop after at least this many new models (whole batched groups); device: "cpu", "cuda", "cuda:1"
    or None / "auto"; progress: a progress bar on stderr; executor / address: as `dmtoolkit train
    --executor --address` (e.g. "ray", "auto"); timeout: seconds per model before a worker is stopped, as
    `--timeout` (None: the recipe's, if any). Returns the `TrainSummary` (written, already_done, remaining).
    Interrupting keeps the completed rows; calling it again resumes.
    """
    for name, value in (("workers", workers), ("limit", limit)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ParameterError(f"{name} must be a whole number >= 1, got {value!r}")
    if timeout is not None and not timeout > 0:
        raise ParameterError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if address and executor != "ray":
        raise ParameterError("address needs executor='ray'")
    if executor not in EXECUTOR_NAMES:
        raise ParameterError(f"unknown executor {executor!r}; use one of: {', '.join(EXECUTOR_NAMES)}")
    path = Path(store.path if isinstance(store, RunStore) else store)
    device = None if device in (None, "auto") else device
    if executor != "ray" or not address:  # on a Ray cluster the workers' devices count, not the driver's
        resolve_device(device)
    workers = (os.cpu_count() or 1) if workers is None else workers
    return train_store(path, make_executor(executor, workers, device, address, timeout=timeout), limit=limit,
                       progress=progress)
