"""Estimates as analyses read them: loaded through their owner (`dmtoolkit.estimate.files`), checked
for the level an analysis needs and against the run store they came from."""

from __future__ import annotations

from pathlib import Path

from dmtoolkit.errors import StoreError, UserError
from dmtoolkit.estimate.files import Estimate, load_estimate
from dmtoolkit.store import RunStore

__all__ = ["Estimate", "check_fresh", "load_estimate", "open_source_store", "require_kind"]


def require_kind(est: Estimate, kind: str, command: str) -> None:
    if est.kind != kind:
        other = "class" if kind == "example" else "example"
        raise UserError(f"{est.path}: `{command}` needs {kind}-level estimates, this file is {est.kind}-level; "
                        f"give a file computed from {'an' if kind == 'example' else 'a'} {kind}-level run store "
                        f"(not {other}-level)")


def open_source_store(est: Estimate, store: str | Path | None = None, *, required: bool = True) -> RunStore | None:
    """The run store an estimate came from (or `store` if given), opened read-only and checked to be that store
    in its current state: every analysis opens it here, so each refuses a stale estimate the same way.

    A store of the same shape from another run would silently score the wrong images and planted truth, and
    one into which more models were trained since gives other answers than the estimate, so its shapes and
    content hash must match those the estimate recorded (`Estimate.check_store`). With `required=False`, None
    when no `store` is given and the recorded one is not there (the caller says what it leaves out); a store
    that is there is always checked. The caller closes it (use `with`).
    """
    path = Path(store) if store is not None else est.store_path
    if path is None:
        if not required:
            return None
        raise StoreError(f"{est.path}: does not name its run store; pass --store STORE.h5")
    if not path.exists():
        if not required and store is None:
            return None
        raise StoreError(f"{est.path}: its run store {path} does not exist (moved?); pass --store STORE.h5")
    run = RunStore(path)
    try:
        est.check_store(run)
    except BaseException:
        run.close()
        raise
    return run


def check_fresh(est: Estimate, store: str | Path | None = None) -> None:
    """Refuse `est` when its run store is there and is not the one it was computed from, in its current state
    (stale: more models trained since); for analyses that read nothing else from the store."""
    run = open_source_store(est, store, required=False)
    if run is not None:
        run.close()
