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
    open_estimate,
)

__all__ = ["Estimate", "OpenedEstimate", "as_opened", "as_opened_of_kind", "load_estimate", "open_estimate",
           "require_kind"]


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
