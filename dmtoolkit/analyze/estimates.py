"""Estimates as analyses read them: loaded through their owner (`dmtoolkit.estimate.files`), checked
for the level an analysis needs and against the run store they came from.

Every analysis takes `str | Path | OpenedEstimate`: a path is opened for that analysis alone (`as_opened`);
`with open_estimate(path, store) as opened:` opens the estimate once for several, so its store is opened and
its content hash computed once (the report does this).
"""

from __future__ import annotations

from pathlib import Path

from dmtoolkit.errors import UserError
from dmtoolkit.estimate.files import (
    Estimate,
    OpenedEstimate,
    as_opened,
    load_estimate,
    open_checked_store,
    open_estimate,
)
from dmtoolkit.store import RunStore

__all__ = ["Estimate", "OpenedEstimate", "as_opened", "as_opened_of_kind", "check_fresh", "load_estimate",
           "open_estimate", "open_source_store", "require_kind"]


def require_kind(est: Estimate, kind: str, command: str) -> None:
    if est.kind != kind:
        other = "class" if kind == "example" else "example"
        raise UserError(f"{est.path}: `{command}` needs {kind}-level estimates, this file is {est.kind}-level; "
                        f"give a file computed from {'an' if kind == 'example' else 'a'} {kind}-level run store "
                        f"(not {other}-level)")


def as_opened_of_kind(source: str | Path | OpenedEstimate, store: str | Path | None, kind: str,
                      command: str) -> OpenedEstimate:
    """`as_opened(source, store)`, refused (`require_kind`) unless its estimate is `kind`-level."""
    opened = as_opened(source, store)
    require_kind(opened.estimate, kind, command)
    return opened


def open_source_store(est: Estimate, store: str | Path | None = None, *, required: bool = True) -> RunStore | None:
    """The run store an estimate came from (or `store`), opened read-only and checked: `open_checked_store`. For
    one-off reads; analyses take an `OpenedEstimate`, which opens and checks it once for all of them."""
    return open_checked_store(est, store, required=required)


def check_fresh(est: Estimate, store: str | Path | None = None) -> None:
    """Refuse `est` when its run store is there and is not the one it was computed from, in its current state
    (stale: more models trained since); for analyses that read nothing else from the store."""
    run = open_source_store(est, store, required=False)
    if run is not None:
        run.close()
