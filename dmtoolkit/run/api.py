"""`dm.train`: train the pending rows of a store from Python, exactly as `dmtoolkit train` does.

The same path as the CLI: the recipe's trainer through an executor (`make_executor`) and the driver
(`train_store`), which holds the store's lock, draws every model's seed from the store's own recipe
(`trainer.seed`, `randomness`), writes rows as they arrive and resumes where it stopped. A notebook never
writes the loop over `pending_rows()` or picks seeds itself.

`ensure_trained` is "create the store, or keep the one made from the same recipe, then train what is missing":
the demo and every benchmark that keeps its stores between runs go through it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dmtoolkit.devices import resolve_device
from dmtoolkit.errors import ParameterError, StoreError
from dmtoolkit.recipe import Recipe
from dmtoolkit.run.driver import TrainSummary, train_store
from dmtoolkit.run.executors import make_executor
from dmtoolkit.run.options import DEFAULT_EXECUTOR, EXECUTOR_NAMES
from dmtoolkit.run.prepare import build_run_data
from dmtoolkit.store import RunData, RunStore, create_store


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


@dataclass(frozen=True)
class Trained:
    """What `ensure_trained` did: the store's path, whether it was created now, the training summary, and the
    seconds training took now (by the caller's clock; creating the store is not counted)."""

    path: Path
    created: bool
    summary: TrainSummary
    seconds: float


def _silent(message: str) -> None:
    pass


def ensure_trained(path: str | Path, recipe: Recipe, *, workers: int | None = None, device: str | None = None,
                   executor: str = DEFAULT_EXECUTOR, limit: int | None = None, progress: bool = True,
                   data: RunData | None = None, say: Callable[[str], None] = _silent,
                   clock: Callable[[], float] = time.perf_counter) -> Trained:
    """Create the store of `recipe` at `path` (from `data`, or `build_run_data(recipe)`) unless it exists, then
    train its pending rows through `train` (workers, device, executor, limit and progress as there), so a rerun
    resumes. An existing store must have been made from this very recipe (its recorded recipe hash, which
    includes the number of models): one made from another recipe or scale is refused in one line, untouched.
    `say` hears "creating NAME (M models, KIND-level)" and "training NAME"; `clock` times the training."""
    path = Path(path)
    created = not path.exists()
    if created:
        say(f"creating {path.name} ({recipe.subsets.models} models, {recipe.subsets.kind}-level)")
        path.parent.mkdir(parents=True, exist_ok=True)
        create_store(path, recipe, build_run_data(recipe) if data is None else data)
    else:
        with RunStore(path) as existing:
            if existing.recipe_hash != recipe.hash():
                raise StoreError(f"{path}: exists but was made from another recipe or scale; "
                                 "remove it or pass another --out")
    say(f"training {path.name}")
    started = clock()
    summary = train(path, workers=workers, limit=limit, device=device, progress=progress, executor=executor)
    return Trained(path, created, summary, clock() - started)
