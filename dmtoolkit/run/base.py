"""What every executor shares: the `Executor` interface, `GroupOutcome`, error -> outcome, and the registry.

An executor takes a `TrainingPlan` (recipe, masks, where the data are: a run store's own, or a retraining's,
see `dmtoolkit.train.job`) and group ids, and yields `GroupOutcome`s as they finish, in any order. A failure is an
outcome (one line naming the trainer, the rows and how it failed), never an exception, so the driver can
retry it and keep going. The driver alone writes a store (`driver.train_store`); a retraining's results
are kept in memory (`driver.train_plan`).

How a group can fail, and the line it reports (`RunNames` words the lines every executor shares):
  raised     "trainer T failed on row R: ValueError: ..." (also `sys.exit(n)`: "exited with code n (sys.exit)")
  died       "trainer T died on row R: its worker process was killed by signal SIGSEGV" (or "exited with code n")
  timed out  "trainer T timed out on row R after 30 s (timeout 30 s per model); its worker process was killed"
The first two are retried once by the driver; a timeout is not (`GroupOutcome.retry` is False): a hang
retried would double the wait.

Implementations: `executors.LocalExecutor`/`SerialExecutor` (processes on this machine) and
`ray_executor.RayExecutor` (Ray tasks). Each imports this module and nothing of the others; they are
found by name through `EXECUTORS` and built by `make_executor`, so Ray is imported only when asked for.
Adding an executor is one module with a class that has `from_options` plus one line in
`dmtoolkit.run.options.EXECUTORS`.
"""

from __future__ import annotations

import importlib
import signal
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol

from dmtoolkit.errors import UserError
from dmtoolkit.run.options import EXECUTOR_NAMES, EXECUTORS
from dmtoolkit.train.job import ModelResult, RunContext, RunInputs, TrainingPlan, group_rows
from dmtoolkit.train.job import group_size as group_size_of

__all__ = ["EXECUTORS", "EXECUTOR_NAMES", "Executor", "GroupOutcome", "RunContext", "RunInputs", "RunNames",
           "TrainingPlan", "compute_outcome", "error_text", "executor_class", "exit_description", "make_executor",
           "row_ranges"]


@dataclass(frozen=True)
class GroupOutcome:
    """The result of one group: its models' results, or the error that stopped it (exactly one is set).

    `retry` False: the driver reports the failure at once instead of retrying the group (a timeout)."""

    group: int
    results: list[ModelResult] | None = None
    error: str | None = None
    retry: bool = True


def row_ranges(rows: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    parts: list[list[int]] = []
    for row in sorted(int(r) for r in rows):
        if parts and row == parts[-1][1] + 1:
            parts[-1][1] = row
        else:
            parts.append([row, row])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in parts)


def rows_text(rows: list[int]) -> str:
    """"row 3" or "rows 2-3"."""
    return f"row{'s' * (len(rows) > 1)} {row_ranges(rows)}"


def exit_description(exitcode: int | None) -> str:
    """How a process ended, from `multiprocessing.Process.exitcode`: "exited with code 3", "was killed by
    signal SIGSEGV"."""
    if exitcode is None:
        return "stopped"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        return f"was killed by signal {name}"
    return f"exited with code {exitcode}"


@dataclass(frozen=True)
class RunNames:
    """What a failure line names, read from the plan once per `run`: the trainer, the rows of a group, and
    the recipe's per-model timeout."""

    trainer: str
    group_size: int
    models: int
    timeout: float | None = None

    @classmethod
    def from_plan(cls, plan: TrainingPlan) -> "RunNames":
        recipe = plan.recipe
        return cls(recipe.trainer_name, group_size_of(recipe), len(plan.masks), recipe.timeout)

    @classmethod
    def from_store(cls, store_path: str | Path) -> "RunNames":
        return cls.from_plan(TrainingPlan.from_store(store_path))

    @property
    def builtin(self) -> bool:
        return self.trainer.startswith("builtin:")

    def rows(self, group: int) -> list[int]:
        return group_rows(group, self.group_size, self.models)

    def deadline(self, group: int, timeout: float | None) -> float | None:
        """Seconds group `group` may take: `timeout` per model times its models (None: no limit)."""
        return None if timeout is None else timeout * len(self.rows(group))

    def died(self, group: int, how: str, starting: bool = False) -> GroupOutcome:
        """`how`: "exited with code 0", "was killed by signal SIGKILL", ... (see `exit_description`)."""
        when = " while its worker process was starting" if starting else ""
        return GroupOutcome(group, error=f"trainer {self.trainer} died on {rows_text(self.rows(group))}{when}: "
                                         f"{'it' if starting else 'its worker process'} {how}"
                                         + (" before returning a result" if how.startswith("exited") else ""))

    def timed_out(self, group: int, timeout: float, what: str = "worker process") -> GroupOutcome:
        rows = self.rows(group)
        limit = timeout * len(rows)
        per = f"timeout {timeout:g} s per model" + (f" x {len(rows)} models" if len(rows) > 1 else "")
        return GroupOutcome(group, error=f"trainer {self.trainer} timed out on {rows_text(rows)} after {limit:g} s "
                                         f"({per}); its {what} was killed", retry=False)


class Executor(Protocol):
    """Computes groups of a plan's models (`plan`: a `TrainingPlan`, or a run store's path for the plan of all
    its models, `TrainingPlan.of`); `close()` releases workers (the driver calls it when done)."""

    def run(self, plan: TrainingPlan | Path, groups: Iterable[int]) -> Iterator[GroupOutcome]: ...

    def close(self) -> None: ...


class ExecutorClass(Protocol):
    """A registered executor class: built from the options every executor takes."""

    @classmethod
    def from_options(cls, workers: int, device: str | None, address: str | None,
                     timeout: float | None = None) -> Executor: ...


def error_text(error: BaseException) -> str:
    """The one line a failed group reports: a user error's message (it names the trainer and the row), else
    the exception's type and message."""
    if isinstance(error, UserError):
        return (str(error).strip().splitlines() or [type(error).__name__])[0]
    return traceback.format_exception_only(type(error), error)[-1].strip()


def exception_text(error: BaseException, trainer: str, rows: list[int]) -> str:
    """The line a group reports for an exception raised while computing it: a user error's own line (a
    `TrainerError` names the trainer and the row), else the trainer, the rows and the exception;
    `SystemExit` (a trainer calling `sys.exit`) as the exit it asked for."""
    if isinstance(error, UserError):
        return error_text(error)
    if isinstance(error, SystemExit):
        code = error.code
        how = (f"exited with code {0 if code is None else code} (sys.exit)" if code is None or isinstance(code, int)
               else f"exited with message {str(code).strip().splitlines()[0] if str(code).strip() else repr(code)!r}"
                    " (sys.exit)")
    else:
        how = error_text(error)
    return f"trainer {trainer} failed on {rows_text(rows)}: {how}"


def compute_outcome(context: RunContext, group: int) -> GroupOutcome:
    """Compute one group in `context`; an exception (even `SystemExit`, anything but Ctrl-C) becomes an error
    outcome naming the trainer and the rows (the driver retries once)."""
    try:
        return GroupOutcome(group, results=context.compute_group(group))
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # reported to the driver, which retries once and then names the rows
        rows = group_rows(group, context.group_size, len(context.masks))
        return GroupOutcome(group, error=exception_text(error, context.trainer.name, rows))



def executor_class(name: str) -> ExecutorClass:
    """The class registered as `name` (its module imported now)."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTOR_NAMES)}")
    module, _, attribute = EXECUTORS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def make_executor(name: str, workers: int, device: str | None, address: str | None = None,
                  timeout: float | None = None) -> Executor:
    """The executor registered as `name`, with `workers` slots on `device` (`address`: a cluster to join;
    `timeout`: seconds per model, in place of the recipe's `timeout`)."""
    return executor_class(name).from_options(workers, device, address, timeout=timeout)
