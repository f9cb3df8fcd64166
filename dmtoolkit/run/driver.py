"""The driver: picks the pending groups of a store, hands them to an executor, writes rows as they arrive.

`train_plan` runs a `TrainingPlan` that has no store of its own (a retraining) the same way and keeps its
results in memory; both share `computed`, the retry rule below.

It is the only writer (it holds the store's lock). Completed rows are durable the moment they are
written, so Ctrl-C or a kill loses at most the groups in flight. A failed group (the trainer raised,
or its worker process died) is retried once; failing twice, it is reported by row number, never
skipped silently. A group that timed out is reported at once, not retried (a hang retried would double
the wait). Every other group is still computed and written first, so a rerun resumes with the failures.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dmtoolkit.capabilities import Capability
from dmtoolkit.errors import UserError
from dmtoolkit.interrupts import CtrlCLatch
from dmtoolkit.run.base import Executor, row_ranges
from dmtoolkit.store import RunStore
from dmtoolkit.train.contract import load_function, source_sha256
from dmtoolkit.train.job import ModelResult, TrainingPlan, group_of
from dmtoolkit.train.job import group_size as group_size_of


class TrainingFailed(UserError):
    """Some models failed (twice, or timed out once); the message names their rows, trainer and error.

    `reason`: the first failure's own line ("trainer m:f died on row 3: ..."), for callers that reword it."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


@dataclass
class TrainSummary:
    written: int = 0
    already_done: int = 0
    remaining: int = 0
    failures: dict[int, str] = field(default_factory=dict)


@dataclass
class Attempts:
    """How the groups of one `computed` call fared: tries per group, the failures reported (group -> its
    line, in the order they were final) and whether one of them timed out."""

    tries: dict[int, int] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    timed_out: bool = False

    def failed_rows(self, group_size: int, models: int) -> np.ndarray:
        return np.concatenate([np.arange(g * group_size, min((g + 1) * group_size, models))
                               for g in sorted(self.failures)])

    def first(self) -> tuple[str, bool]:
        """The first failure's line, and whether it was tried twice."""
        group = next(iter(self.failures))
        return self.failures[group], self.tries[group] > 1


__all__ = ["Attempts", "TrainSummary", "TrainingFailed", "computed", "pending_groups", "row_ranges", "train_plan",
           "train_store"]


def computed(executor: Executor, plan: TrainingPlan, groups: Iterable[int], attempts: Attempts) -> Iterator[ModelResult]:
    """The results of `groups` of `plan` as `executor` computes them, in the order they arrive.

    A failed group is retried once, after the first pass (not a timeout: its outcome's `retry` is False); one
    failing again, or timing out, is recorded in `attempts.failures` and the rest go on. Ctrl-C raises
    `KeyboardInterrupt`, at the latest when the next outcome arrives (`CtrlCLatch`)."""
    with CtrlCLatch() as ctrl_c:  # a Ctrl-C swallowed by a finalizer still stops the run at the next outcome
        queue = list(groups)
        while queue:
            retry = []
            for outcome in executor.run(plan, queue):
                ctrl_c.check()
                attempts.tries[outcome.group] = attempts.tries.get(outcome.group, 0) + 1
                if outcome.error is not None:
                    if attempts.tries[outcome.group] < 2 and outcome.retry:
                        retry.append(outcome.group)
                    else:
                        attempts.failures[outcome.group] = outcome.error
                        attempts.timed_out = attempts.timed_out or not outcome.retry
                    continue
                yield from outcome.results or []
            queue = retry
        ctrl_c.check()


def train_plan(plan: TrainingPlan, executor: Executor) -> list[ModelResult]:
    """Every model of `plan`, computed by `executor` (closed when done) and kept in memory: nothing is written.

    Results in row order. Failures follow `train_store`'s rule (retried once, a timeout not); any left raise
    `TrainingFailed` naming the rows, with `reason` the first failure's own line."""
    if plan.recipe.trainer is not None:  # an unimportable trainer is one line here, before any worker starts
        load_function(plan.recipe.trainer.function)
    attempts = Attempts()
    try:
        results = {result.index: result for result in computed(executor, plan, range(plan.num_groups), attempts)}
    finally:
        executor.close()
    if attempts.failures:
        failed = attempts.failed_rows(group_size_of(plan.recipe), len(plan.masks))
        first, twice = attempts.first()
        raise TrainingFailed(f"models in row{'s' * (len(failed) > 1)} {row_ranges(failed)} failed"
                             f"{' twice' * twice} ({first})", reason=first)
    return [results[i] for i in range(len(plan.masks))]


def pending_groups(store: RunStore, group_size: int, limit: int | None,
                   shard: tuple[int, int] | None = None) -> list[int]:
    """Groups with at least one pending row, in order, enough to cover `limit` pending rows.

    With `shard=(I, N)` only groups g with g % N == I count (one scheduler-array job's share).
    """
    groups: list[int] = []
    covered = 0
    for row in store.pending_rows():
        group = group_of(int(row), group_size)
        if shard is not None and group % shard[1] != shard[0]:
            continue
        if not groups or groups[-1] != group:
            if limit is not None and covered >= limit:
                break
            groups.append(group)
        covered += 1
    return groups


def train_store(path: str | Path, executor: Executor, *, limit: int | None = None,
                progress: bool = True, shard: tuple[int, int] | None = None) -> TrainSummary:
    """Compute every pending row (or at least `limit` of them, in whole groups) and write them.

    `shard=(I, N)` restricts the work to groups g with g % N == I; `remaining` then counts that share only.
    """
    path = Path(path)
    with RunStore(path, writable=True) as store:
        store.require(Capability.RECIPE, "train")
        recipe = store.recipe
        if recipe.trainer is not None:  # an unimportable trainer is one line here, before any worker starts
            digest = source_sha256(load_function(recipe.trainer.function))
            if store.trainer_source_sha256 and digest and digest != store.trainer_source_sha256:
                print(f"warning: the source of trainer {recipe.trainer.function} changed since {path} was created; "
                      "rows computed before and after the change may differ", file=sys.stderr)
        group_size = group_size_of(recipe)
        completed = store.completed_mask()
        summary = TrainSummary(already_done=int(completed.sum()))
        groups = pending_groups(store, group_size, limit, shard)
        todo = sum(int((~completed[g * group_size:(g + 1) * group_size]).sum()) for g in groups)
        attempts = Attempts(failures=summary.failures)
        bar = tqdm(total=todo, desc="models", unit="model", file=sys.stderr, disable=not progress,
                   dynamic_ncols=True)
        try:
            for result in computed(executor, TrainingPlan.from_store(store), groups, attempts):
                if completed[result.index]:
                    continue
                store.write_row(result.index, result.margins, seed=result.seed,
                                source_accuracy=result.source_accuracy, target_accuracy=result.target_accuracy,
                                seconds=result.seconds, predictions=result.predictions,
                                source_margins=result.source_margins,
                                source_test_margins=result.source_test_margins)
                completed[result.index] = True
                summary.written += 1
                bar.update(1)
        finally:
            bar.close()
            executor.close()
            share = np.ones(len(completed), bool)
            if shard is not None:
                share = (np.arange(len(completed)) // group_size) % shard[1] == shard[0]
            summary.remaining = int((~completed & share).sum())
    if summary.failures:
        failed = attempts.failed_rows(group_size, len(completed))
        first, twice = attempts.first()
        longer = " with a longer --timeout" if attempts.timed_out else ""
        raise TrainingFailed(f"{path}: models in row{'s' * (len(failed) > 1)} {row_ranges(failed)} failed"
                             f"{' twice' * twice} ({first}); {summary.written} rows were written and kept; "
                             f"rerun `dmtoolkit train`{longer} to retry", reason=first)
    return summary
