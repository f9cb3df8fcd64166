"""Executors on this machine: `SerialExecutor` (this process) and `LocalExecutor` (worker processes).

Both compute groups with a `RunContext` built once per process from the store, and turn errors into
`GroupOutcome`s (see `dmtoolkit.run.base`, which also holds the registry `make_executor` reads).
"""

from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Iterator

import torch

from dmtoolkit.run.base import (
    EXECUTOR_NAMES,
    EXECUTORS,
    Executor,
    GroupOutcome,
    compute_outcome,
    error_text,
    make_executor,
)
from dmtoolkit.train.job import RunContext

__all__ = ["EXECUTORS", "EXECUTOR_NAMES", "Executor", "GroupOutcome", "LocalExecutor", "SerialExecutor",
           "make_executor"]


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
                self._context = RunContext.from_store(store_path, self.device)
            for group in groups:
                yield compute_outcome(self._context, group)
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        self._context = None


_WORKER_CONTEXT: RunContext | None = None
_WORKER_ERROR: str | None = None  # why the context could not be built (e.g. the trainer's import failed)


def _init_worker(store_path: str, device: str | None, cwd: str) -> None:
    global _WORKER_CONTEXT, _WORKER_ERROR
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and stops the workers
    torch.set_num_threads(1)
    if cwd not in sys.path:  # a recipe's trainer imports from the driver's working directory too
        sys.path.insert(0, cwd)
    try:
        _WORKER_CONTEXT = RunContext.from_store(store_path, device)
    except Exception as error:  # reported per group (retried, then named by row), not a broken pool
        _WORKER_ERROR = error_text(error)


def _worker_compute(group: int) -> GroupOutcome:
    if _WORKER_CONTEXT is None:
        return GroupOutcome(group, error=_WORKER_ERROR or "worker has no run context")
    return compute_outcome(_WORKER_CONTEXT, group)


class LocalExecutor:
    """N single-threaded worker processes on this machine (the pilot found 1 thread/process fastest)."""

    def __init__(self, workers: int, device: str | None = None) -> None:
        self.workers, self.device = workers, device
        self._pool: ProcessPoolExecutor | None = None

    @classmethod
    def from_options(cls, workers: int, device: str | None, address: str | None = None) -> Executor:
        """The registry's constructor: one worker computes in this process, more in worker processes."""
        if address:
            raise ValueError("the local executor runs on this machine; a cluster address is for the ray executor")
        return SerialExecutor(device) if workers <= 1 else cls(workers, device)

    def run(self, store_path: Path, groups: Iterable[int]) -> Iterator[GroupOutcome]:
        pending: dict[Future, int] = {}
        queue = list(groups)
        try:
            while queue or pending:
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"),
                                                     initializer=_init_worker,
                                                     initargs=(str(store_path), self.device, os.getcwd()))
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
