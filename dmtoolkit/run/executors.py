"""Executors compute groups of models; the driver alone writes the store.

An executor takes group ids and yields `GroupOutcome`s as they finish, in any order. A failure is an
outcome (with the error text), never an exception, so the driver can retry it and keep going.
One class per implementation; the CLI picks one by name from `EXECUTORS`.
"""

from __future__ import annotations

import os
import signal
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np
import torch

from dmtoolkit.recipe import Recipe
from dmtoolkit.store import RunData, RunStore
from dmtoolkit.train.job import ModelResult, RunContext


@dataclass(frozen=True)
class GroupOutcome:
    group: int
    results: list[ModelResult] | None = None
    error: str | None = None


class Executor(Protocol):
    def run(self, store_path: Path, groups: Iterable[int]) -> Iterator[GroupOutcome]: ...

    def close(self) -> None: ...


def build_context(recipe: Recipe, masks: np.ndarray, data: RunData, device: str | None) -> RunContext:
    """The worker's context: source training from ffcv betons when the recipe names one, else from memory."""
    if recipe.source.beton_train:
        from dmtoolkit.data.beton import BetonRunContext

        return BetonRunContext(recipe, masks, data, device)
    return RunContext(recipe, masks, data, device)


def context_from_store(path: str | Path, device: str | None) -> RunContext:
    with RunStore(path) as store:
        return build_context(store.recipe, store.file["masks"][()].astype(bool), store.run_data(), device)


def _compute(context: RunContext, group: int) -> GroupOutcome:
    try:
        return GroupOutcome(group, results=context.compute_group(group))
    except Exception as error:  # reported to the driver, which retries once and then names the rows
        last = traceback.format_exception_only(type(error), error)[-1].strip()
        return GroupOutcome(group, error=last)


class SerialExecutor:
    """Computes groups one after another in this process (one thread, as every worker uses)."""

    def __init__(self, device: str | None = None) -> None:
        self.device = device
        self._context: RunContext | None = None

    def run(self, store_path: Path, groups: Iterable[int]) -> Iterator[GroupOutcome]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if self._context is None:
                self._context = context_from_store(store_path, self.device)
            for group in groups:
                yield _compute(self._context, group)
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        self._context = None


_WORKER_CONTEXT: RunContext | None = None


def _init_worker(store_path: str, device: str | None) -> None:
    global _WORKER_CONTEXT
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and stops the workers
    torch.set_num_threads(1)
    _WORKER_CONTEXT = context_from_store(store_path, device)


def _worker_compute(group: int) -> GroupOutcome:
    assert _WORKER_CONTEXT is not None
    return _compute(_WORKER_CONTEXT, group)


class LocalExecutor:
    """N single-threaded worker processes on this machine (the pilot found 1 thread/process fastest)."""

    def __init__(self, workers: int, device: str | None = None) -> None:
        self.workers, self.device = workers, device
        self._pool: ProcessPoolExecutor | None = None

    def run(self, store_path: Path, groups: Iterable[int]) -> Iterator[GroupOutcome]:
        pending: dict[Future, int] = {}
        queue = list(groups)
        try:
            while queue or pending:
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"),
                                                     initializer=_init_worker, initargs=(str(store_path), self.device))
                while queue and len(pending) < 2 * self.workers:
                    group = queue.pop(0)
                    pending[self._pool.submit(_worker_compute, group)] = group
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    group = pending.pop(future)
                    try:
                        yield future.result()
                    except BrokenProcessPool as error:  # a worker died: report, start a fresh pool
                        yield GroupOutcome(group, error=f"worker process died ({error})")
                        queue = [*pending.values(), *queue]
                        pending.clear()
                        self.close()
                        break
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is None:
            return
        for process in list(getattr(self._pool, "_processes", {}).values()):
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None


EXECUTORS = ("local", "ray")


def make_executor(name: str, workers: int, device: str | None, address: str | None = None) -> Executor:
    """The executor named on the command line (`address`: a Ray cluster to join; only for "ray")."""
    if name == "local":
        return SerialExecutor(device) if workers <= 1 else LocalExecutor(workers, device)
    if name == "ray":
        from dmtoolkit.run.ray_executor import RayExecutor  # Ray is optional: imported only when asked for

        return RayExecutor(workers, device, address)
    raise ValueError(f"unknown executor {name!r}")
