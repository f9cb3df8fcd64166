"""What a run store can be used for, checked in one place: one check and one message per capability.

Not every store supports every command. A store made by `dmtoolkit store import` holds masks and margins only
(no recipe, no images); a store whose recipe names a trainer that brings its own data (`own_data`) holds no
images; a store whose rows come from a user's trainer (`trainer: MODULE:FUNCTION`) has no built-in networks
whose training can be differentiated or whose features can be read. A command that needs what a store lacks
calls `RunStore.require(capability, command)` (or `Capability.require` on a recipe, before a store exists) and
is refused in the capability's one line, which names the store, what it lacks, the command and what to do
instead. Code that only chooses a path (which trainer trains, whether an interval can be recomputed) asks
`RunStore.has(capability)`.

Store facts read for dispatch only, never refused on: `explicit_masks` (masks given at creation, so sampling
units are detected rather than re-derived from the seed) and `own_data` (the trainer is given no `RunData`;
for commands it shows as the missing `IMAGES`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from dmtoolkit.errors import StoreError
from dmtoolkit.recipe import Recipe

IMPORTED_HAS_NO_IMAGES = "`dmtoolkit store import` brings masks and margins only"
OWN_DATA_HAS_NO_IMAGES = "its recipe's trainer brings its own data"


def _lacks_recipe(subject: Any) -> str | None:
    return None if isinstance(subject, Recipe) or not subject.imported else "imported"


def _lacks_images(subject: Any) -> str | None:
    if isinstance(subject, Recipe):
        return OWN_DATA_HAS_NO_IMAGES if subject.own_data is not None else None
    if subject.has_images:
        return None
    return IMPORTED_HAS_NO_IMAGES if subject.imported else OWN_DATA_HAS_NO_IMAGES


def _lacks_builtin_networks(subject: Any) -> str | None:
    recipe = subject if isinstance(subject, Recipe) else subject.recipe
    return recipe.trainer.function if recipe.trainer is not None else None


@dataclass(frozen=True)
class _Row:
    """One capability: how a store (or recipe) lacks it, and the parts of its one message."""

    lacks: Callable[[Any], str | None]  # the detail `lack` names ({why}), or None when present
    lack: str                           # what the store lacks, and why
    instead: str                        # what to do instead
    needs: tuple[str, ...] = ()         # capabilities checked first (by name)


_TABLE: dict[str, _Row] = {
    "RECIPE": _Row(
        _lacks_recipe,
        "an imported store has no recipe (made by `dmtoolkit store import`)",
        "influence, datamodels and the analyses of masks and margins work on it; to train, make a store from a "
        "recipe with `dmtoolkit init`"),
    "IMAGES": _Row(
        _lacks_images,
        "this store has no images ({why})",
        "the analyses of masks and margins (rank, subpop without --png, mislabels, explain) work on it"),
    "BUILTIN_NETWORKS": _Row(
        _lacks_builtin_networks,
        "this store's rows come from trainer {why}, not the built-in networks (their training and features)",
        "`dmtoolkit gradient` (--head fixed, --checkpoints 1) scores a trainer's networks through its module's "
        "gradient_networks(job), and influence and datamodels work on any store",
        needs=("RECIPE",)),
}


class Capability(Enum):
    """What a command may need from a run store (the table above: one check and one message each)."""

    RECIPE = "RECIPE"                      # made from a recipe (not imported): models can be trained from it
    IMAGES = "IMAGES"                      # source and target pixels are stored
    BUILTIN_NETWORKS = "BUILTIN_NETWORKS"  # rows come from the built-in networks (not a user's trainer)

    @property
    def _row(self) -> _Row:
        return _TABLE[self.value]

    def missing(self, subject: Any) -> str | None:
        """Why `subject` (a `RunStore`, or a `Recipe` before its store exists) lacks this capability, as the
        detail its message names; None when it has it (and the capabilities it needs first)."""
        for name in (*self._row.needs, self.value):
            why = _TABLE[name].lacks(subject)
            if why is not None:
                return why
        return None

    def present(self, subject: Any) -> bool:
        return self.missing(subject) is None

    def message(self, where: str | Path, command: str | None, why: str) -> str:
        """The one line: `where` (the store) lacks this, which `dmtoolkit COMMAND` needs; what to do instead.
        `command` None (a library call no command named) reads "this call"."""
        row = self._row
        who = f"`dmtoolkit {command}`" if command else "this call"
        return f"{where}: {row.lack.format(why=why)}, which {who} needs; {row.instead}"

    def require(self, subject: Any, where: str | Path, command: str | None = None) -> None:
        """Refuse `subject` in one line (`StoreError`) when it lacks this capability or one it needs first."""
        for name in (*self._row.needs, self.value):
            capability = Capability(name)
            why = capability._row.lacks(subject)
            if why is not None:
                raise StoreError(capability.message(where, command, why))
