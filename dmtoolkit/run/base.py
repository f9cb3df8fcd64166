"""What every executor shares: the `Executor` interface, `GroupOutcome`, error -> outcome, and the registry.

An executor takes group ids and yields `GroupOutcome`s as they finish, in any order. A failure is an
outcome (with the error's last line), never an exception, so the driver can retry it and keep going.
The driver alone writes the store.

Implementations: `executors.LocalExecutor`/`SerialExecutor` (processes on this machine) and
`ray_executor.RayExecutor` (Ray tasks). Each imports this module and nothing of the others; they are
found by name through `EXECUTORS` and built by `make_executor`, so Ray is imported only when asked for.
Adding an executor is one module with a class that has `from_options` plus one line in
`dmtoolkit.run.options.EXECUTORS`.
"""

from __future__ import annotations

import importlib
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol

from dmtoolkit.errors import UserError
from dmtoolkit.run.options import EXECUTOR_NAMES, EXECUTORS
from dmtoolkit.train.job import ModelResult, RunContext, RunInputs

__all__ = ["EXECUTORS", "EXECUTOR_NAMES", "Executor", "GroupOutcome", "RunContext", "RunInputs", "compute_outcome",
           "error_text", "executor_class", "make_executor"]


@dataclass(frozen=True)
class GroupOutcome:
    """The result of one group: its models' results, or the error that stopped it (exactly one is set)."""

    group: int
    results: list[ModelResult] | None = None
    error: str | None = None


class Executor(Protocol):
    """Computes groups of a store's models; `close()` releases workers (the driver calls it when done)."""

    def run(self, store_path: Path, groups: Iterable[int]) -> Iterator[GroupOutcome]: ...

    def close(self) -> None: ...


class ExecutorClass(Protocol):
    """A registered executor class: built from the options every executor takes."""

    @classmethod
    def from_options(cls, workers: int, device: str | None, address: str | None) -> Executor: ...


def error_text(error: BaseException) -> str:
    """The one line a failed group reports: a user error's message (it names the trainer and the row), else
    the exception's type and message."""
    if isinstance(error, UserError):
        return (str(error).strip().splitlines() or [type(error).__name__])[0]
    return traceback.format_exception_only(type(error), error)[-1].strip()


def compute_outcome(context: RunContext, group: int) -> GroupOutcome:
    """Compute one group in `context`; an exception becomes an error outcome (the driver retries once)."""
    try:
        return GroupOutcome(group, results=context.compute_group(group))
    except Exception as error:  # reported to the driver, which retries once and then names the rows
        return GroupOutcome(group, error=error_text(error))




def executor_class(name: str) -> ExecutorClass:
    """The class registered as `name` (its module imported now)."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTOR_NAMES)}")
    module, _, attribute = EXECUTORS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def make_executor(name: str, workers: int, device: str | None, address: str | None = None) -> Executor:
    """The executor registered as `name`, with `workers` slots on `device` (`address`: a cluster to join)."""
    return executor_class(name).from_options(workers, device, address)
