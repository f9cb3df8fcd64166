"""Executors on this machine: `LocalExecutor` (worker processes) and `SerialExecutor` (this process).

Both compute groups of a `TrainingPlan` with a `RunContext` built once per process from it (a worker
process reads the data from the plan's store, or receives them with the plan when they are only in
memory), and turn errors into `GroupOutcome`s (see `dmtoolkit.run.base`, which also holds the registry `make_executor` reads).

`LocalExecutor` runs its own small pool: each worker process has a pipe, is sent one group at a time and
answers "started" then the outcome, so the driver always knows which group a worker was computing. A
worker that dies (`os._exit`, a signal, the OOM killer) is reported as that group's failure with its exit
code or signal, and replaced; a group running past its deadline (timeout per model x models in the group)
has its worker killed and is reported as timed out. Groups other workers finished are yielded (and
written by the driver) as they arrive, so a death loses nothing but the group it hit. Nothing is printed.

A recipe's own trainer (`MODULE:FUNCTION`) always runs in worker processes, even with one worker, so a
trainer that exits or crashes cannot take the driver with it; the built-in trainer with one worker and
no timeout computes in this process (`SerialExecutor`). Workers are forked from a fork server that has
imported this module, torch and torch._dynamo: the first worker of a driver process costs the server's
start (3-8 s measured on the shared 2-core machine), every later one about 0.1 s (8 tiny-CNN models:
0.8 s in this process, 0.9 s in a one-worker pool once the server runs).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Iterable, Iterator

import torch

from dmtoolkit.devices import TRAINING_THREADS, training_threads
from dmtoolkit.run.base import (
    EXECUTOR_NAMES,
    EXECUTORS,
    Executor,
    GroupOutcome,
    RunNames,
    compute_outcome,
    error_text,
    exit_description,
    make_executor,
)
from dmtoolkit.train.job import RunContext, TrainingPlan

__all__ = ["EXECUTORS", "EXECUTOR_NAMES", "Executor", "GroupOutcome", "LocalExecutor", "SerialExecutor",
           "make_executor"]


class SerialExecutor:
    """Computes groups one after another in this process (one thread, as every worker uses).

    Only for trainers that cannot kill the process: `LocalExecutor` uses it for the built-in trainer."""

    def __init__(self, device: str | None = None) -> None:
        self.device = device
        self._context: tuple[str, RunContext] | None = None  # (plan key, its context)

    def run(self, plan: TrainingPlan | Path, groups: Iterable[int]) -> Iterator[GroupOutcome]:
        plan = TrainingPlan.of(plan)
        with training_threads():
            if self._context is None or self._context[0] != plan.key:
                self._context = (plan.key, plan.context(self.device))
            for group in groups:
                yield compute_outcome(self._context[1], group)

    def close(self) -> None:
        self._context = None


_WORKER_CONTEXT: RunContext | None = None
_WORKER_ERROR: str | None = None  # why the context could not be built (e.g. the trainer's import failed)


def _init_worker(plan: TrainingPlan, device: str | None, cwd: str, path: list[str] | None = None,
                 environ: dict[str, str] | None = None) -> None:
    """Make this process see what the driver sees now (working directory, import path, environment: a
    forkserver child starts from the server's), then build the plan's run context."""
    global _WORKER_CONTEXT, _WORKER_ERROR
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and stops the workers
    torch.set_num_threads(TRAINING_THREADS)
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    os.chdir(cwd)
    if path is not None:
        sys.path[:] = path
    if cwd not in sys.path:  # a recipe's trainer imports from the driver's working directory too
        sys.path.insert(0, cwd)
    try:
        _WORKER_CONTEXT = plan.context(device)
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # reported per group (retried, then named by row); sys.exit at import too
        _WORKER_ERROR = error_text(error)


def _worker_compute(group: int) -> GroupOutcome:
    if _WORKER_CONTEXT is None:
        return GroupOutcome(group, error=_WORKER_ERROR or "worker has no run context")
    return compute_outcome(_WORKER_CONTEXT, group)


def _worker_main(conn: Connection, plan: TrainingPlan, device: str | None, cwd: str, path: list[str],
                 environ: dict[str, str]) -> None:
    """A worker process: build the run context, then for each group sent answer ("started", g) and
    ("done", outcome); a closed pipe or None ends it."""
    _init_worker(plan, device, cwd, path, environ)
    while True:
        try:
            group = conn.recv()
        except (EOFError, OSError):  # the driver is gone
            return
        if group is None:
            return
        conn.send(("started", group))
        conn.send(("done", _worker_compute(group)))


def _process_context() -> BaseContext:
    """Where worker processes come from: a fork server that has imported this module (and torch) once,
    so a worker starts in well under a second, replacing one that died included; spawn where there is
    no fork server (Windows). Neither inherits the driver's threads or open store."""
    if "forkserver" not in get_all_start_methods():
        return get_context("spawn")
    context = get_context("forkserver")
    context.set_forkserver_preload([__name__, "torch._dynamo"])  # torch.optim imports it on its first step
    return context


STARTUP_SECONDS = 120.0
"""With a timeout, how long a worker may take to start (load the run, import the trainer) on top of it."""


class _Worker:
    """One worker process, its pipe, and the group it is computing (`started`: when it began, monotonic)."""

    def __init__(self, plan: TrainingPlan, device: str | None) -> None:
        context = _process_context()
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, name="dmtoolkit-worker",
                                       args=(child, plan, device, os.getcwd(), list(sys.path), dict(os.environ)))
        self.process.start()
        child.close()
        self.group: int | None = None
        self.sent: float = 0.0  # when the group was sent (monotonic)
        self.started: float | None = None

    def send(self, group: int) -> None:
        self.group, self.sent, self.started = group, time.monotonic(), None
        self.conn.send(group)

    def deadline(self, seconds: float) -> float:
        """When a group allowed `seconds` must be done: from its start, or for a worker still starting (loading
        the run and importing the trainer) `STARTUP_SECONDS` more from when the group was sent."""
        return self.started + seconds if self.started is not None else self.sent + STARTUP_SECONDS + seconds

    def receive(self) -> GroupOutcome | None:
        """Read what the worker has sent: its outcome when it finished its group, else None (raises
        EOFError when its pipe closed)."""
        while self.conn.poll():
            kind, value = self.conn.recv()
            if kind == "started":
                self.started = time.monotonic()
            else:
                self.group, self.started = None, None
                return value
        return None

    def kill(self) -> None:
        if self.process.is_alive():
            try:
                os.kill(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.join()
        self.conn.close()


class LocalExecutor:
    """N single-threaded worker processes on this machine (the pilot found 1 thread/process fastest).

    `timeout`: seconds per model (a group of G models gets G times it); None takes the recipe's `timeout`.
    Workers live for one `run` (the driver's retry pass starts fresh ones)."""

    def __init__(self, workers: int, device: str | None = None, timeout: float | None = None) -> None:
        self.workers, self.device, self.timeout = workers, device, timeout
        self._serial: SerialExecutor | None = None

    @classmethod
    def from_options(cls, workers: int, device: str | None, address: str | None = None,
                     timeout: float | None = None) -> Executor:
        """The registry's constructor."""
        if address:
            raise ValueError("the local executor runs on this machine; a cluster address is for the ray executor")
        return cls(workers, device, timeout)

    def run(self, plan: TrainingPlan | Path, groups: Iterable[int]) -> Iterator[GroupOutcome]:
        plan = TrainingPlan.of(plan)
        names = RunNames.from_plan(plan)
        timeout = self.timeout if self.timeout is not None else names.timeout
        if self.workers <= 1 and names.builtin and timeout is None:
            self._serial = self._serial or SerialExecutor(self.device)
            yield from self._serial.run(plan, groups)
            return
        yield from self._run_workers(plan.for_workers(), list(groups), names, timeout)

    def _run_workers(self, plan: TrainingPlan, queue: list[int], names: RunNames,
                     timeout: float | None) -> Iterator[GroupOutcome]:
        workers: list[_Worker] = []

        def discard(worker: _Worker) -> None:
            worker.kill()
            workers.remove(worker)

        try:
            while queue or any(w.group is not None for w in workers):
                while queue and (len(workers) < self.workers or any(w.group is None for w in workers)):
                    idle = [w for w in workers if w.group is None]
                    worker = idle[0] if idle else _Worker(plan, self.device)
                    if not idle:
                        workers.append(worker)
                    try:
                        worker.send(queue[0])
                    except OSError:  # it died while idle: replace it
                        discard(worker)
                        continue
                    queue.pop(0)
                busy = [w for w in workers if w.group is not None]
                wait_seconds = None
                if timeout is not None:
                    wait_seconds = max(0.0, min(w.deadline(names.deadline(w.group, timeout)) for w in busy)
                                       - time.monotonic())
                ready = set(wait_for([w.conn for w in busy] + [w.process.sentinel for w in busy], wait_seconds))
                for worker in busy:
                    if worker.conn not in ready and worker.process.sentinel not in ready:
                        continue
                    group, starting, closed = worker.group, worker.started is None, False
                    try:
                        outcome = worker.receive()
                    except (EOFError, OSError):  # its pipe closed: the process is gone (or going)
                        outcome, closed = None, True
                        worker.process.join(timeout=5)
                    if outcome is not None:
                        yield outcome
                    elif closed or not worker.process.is_alive():
                        starting = starting and worker.started is None
                        discard(worker)
                        yield names.died(group, exit_description(worker.process.exitcode), starting=starting)
                if timeout is None:
                    continue
                now = time.monotonic()
                for worker in [w for w in workers if w.group is not None]:
                    if now >= worker.deadline(names.deadline(worker.group, timeout)):
                        group = worker.group
                        discard(worker)
                        yield names.timed_out(group, timeout)
        finally:  # idle workers are told to exit; busy ones (Ctrl-C, an early stop) are killed
            for worker in workers:
                if worker.group is None:
                    try:
                        worker.conn.send(None)
                    except OSError:
                        pass
            deadline = time.monotonic() + 5
            for worker in workers:
                if worker.group is None:
                    worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
                worker.kill()

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None
