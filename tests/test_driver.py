"""The driver: retries a failing group once, reports it by rows, keeps what was written; Ctrl-C is clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

import h5py
import numpy as np
import pytest

from dmtoolkit.interrupts import CtrlCLatch
from dmtoolkit.run.driver import TrainingFailed, train_store
from dmtoolkit.run.executors import GroupOutcome
from dmtoolkit.train.job import ModelResult

from .conftest import ROOT, SMALL_RECIPE, write_recipe
from .synthetic import synthetic_store


class ScriptedExecutor:
    """Fails the groups in `failures` as many times as listed; succeeds otherwise."""

    def __init__(self, failures: dict[int, int], targets: int) -> None:
        self.failures, self.targets, self.calls = dict(failures), targets, []

    def run(self, store_path: Path, groups: Iterable[int]) -> Iterator[GroupOutcome]:
        for group in groups:
            self.calls.append(group)
            if self.failures.get(group, 0) > 0:
                self.failures[group] -= 1
                yield GroupOutcome(group, error="RuntimeError: boom")
                continue
            results = [ModelResult(i, np.full(self.targets, i, np.float32), i, 0.5, 0.5, 1.0)
                       for i in (2 * group, 2 * group + 1)]
            yield GroupOutcome(group, results=results)

    def close(self) -> None:
        pass


def _store(tmp_path: Path) -> Path:
    return synthetic_store(tmp_path / "s.h5", np.zeros((6, 4), np.float32), completed=np.zeros(6, bool),
                           models_per_batch=2)


def test_a_group_failing_once_is_retried(tmp_path: Path) -> None:
    executor = ScriptedExecutor({1: 1}, targets=4)
    summary = train_store(_store(tmp_path), executor, progress=False)
    assert summary.written == 6 and summary.failures == {}
    assert executor.calls == [0, 1, 2, 1]


def test_a_group_failing_twice_is_reported_and_the_rest_kept(tmp_path: Path) -> None:
    path = _store(tmp_path)
    with pytest.raises(TrainingFailed) as info:
        train_store(path, ScriptedExecutor({1: 2}, targets=4), progress=False)
    assert "rows 2-3 failed twice (RuntimeError: boom)" in str(info.value) and "4 rows were written" in str(info.value)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["completed"][()], [1, 1, 0, 0, 1, 1])
        assert f["margins"][5, 0] == 5


def test_a_plan_is_trained_in_memory_with_the_same_retry_rule(tmp_path: Path) -> None:
    """train_plan: the driver's retry-once rule, results in row order, nothing written (the store is only where
    the plan's data are)."""
    from dmtoolkit.run.driver import train_plan
    from dmtoolkit.train.job import TrainingPlan

    path = _store(tmp_path)
    before = path.read_bytes()
    plan = TrainingPlan.from_store(path)
    executor = ScriptedExecutor({1: 1}, targets=4)
    results = train_plan(plan, executor)
    assert executor.calls == [0, 1, 2, 1] and [r.index for r in results] == list(range(6))
    assert [float(r.margins[0]) for r in results] == [0, 1, 2, 3, 4, 5]
    with pytest.raises(TrainingFailed) as info:
        train_plan(plan, ScriptedExecutor({2: 2}, targets=4))
    assert str(info.value) == "models in rows 4-5 failed twice (RuntimeError: boom)"
    assert info.value.reason == "RuntimeError: boom"
    assert path.read_bytes() == before


def test_a_plan_names_its_data_and_sends_workers_a_path_when_it_has_one(tmp_path: Path) -> None:
    from dmtoolkit.store import RunStore
    from dmtoolkit.train.job import TrainingPlan

    path = _store(tmp_path)
    plan = TrainingPlan.from_store(path)
    with RunStore(path) as store:
        data, masks, created = store.run_data(), store.masks[()], store.created
    assert plan.store == path and plan.data is None and plan.key.startswith(f"{path.resolve()}|{created}|")
    np.testing.assert_array_equal(plan.masks, masks)
    assert TrainingPlan.of(path).key == plan.key and TrainingPlan.of(plan) is plan and plan.num_groups == 3
    np.testing.assert_array_equal(plan.run_data().target_test.images, data.target_test.images)  # read from the store
    both = TrainingPlan(plan.recipe, masks[:3], store=path, data=data)
    assert both.run_data() is data and both.for_workers().data is None and both.for_workers().key == both.key
    alone = TrainingPlan(plan.recipe, masks[:3], data=data)
    assert alone.for_workers() is alone and alone.key != TrainingPlan(plan.recipe, masks[:3], data=data).key
    # a store's own plan goes to workers without its masks (no pickled copy per worker start); they read them
    sent = plan.for_workers()
    assert plan.masks_in_store and sent.masks is None and sent.key == plan.key and sent.store == path
    np.testing.assert_array_equal(sent.inputs().masks, masks)
    assert both.for_workers().masks is not None  # a retraining's own masks are not in the store: they go along
    with pytest.raises(ValueError, match="without masks must read them from its run store"):
        TrainingPlan(plan.recipe, None, data=data)
    with pytest.raises(ValueError, match="needs its data"):
        TrainingPlan(plan.recipe, masks)


class _CtrlCInAFinalizer:
    """Runs the SIGINT handler inside `__del__`, as when the signal lands while the garbage collector finalizes an
    h5py or multiprocessing object: Python prints "Exception ignored" and that KeyboardInterrupt is lost."""

    def __del__(self) -> None:
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)


class CtrlCExecutor(ScriptedExecutor):
    """Ctrl-C is pressed (and swallowed) while it computes group `press`."""

    def __init__(self, press: int, targets: int) -> None:
        super().__init__({}, targets)
        self.press = press

    def run(self, store_path: Path, groups: Iterable[int]) -> Iterator[GroupOutcome]:
        for outcome in super().run(store_path, groups):
            if outcome.group == self.press:
                _CtrlCInAFinalizer()  # finalized at once
            yield outcome


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Python's own Ctrl-C handler, even when the tests run in a background job (started with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_finalizer_swallows_ctrl_c_without_the_latch(ctrl_c_raises: None) -> None:
    # the failure this guards against: with Python's handler alone, the press raised inside __del__ is lost
    outcomes = list(CtrlCExecutor(press=1, targets=4).run(Path("unused"), range(3)))
    assert [o.group for o in outcomes] == [0, 1, 2]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_lost_in_a_finalizer_still_stops_training(tmp_path: Path, ctrl_c_raises: None) -> None:
    path = _store(tmp_path)
    executor = CtrlCExecutor(press=1, targets=4)
    with pytest.raises(KeyboardInterrupt):
        train_store(path, executor, progress=False)
    assert executor.calls == [0, 1]  # stopped at the outcome that came after the press, not at the end
    with h5py.File(path, "r") as f:
        assert f["completed"][()].tolist() == [True, True, False, False, False, False]
        assert np.array_equal(f["margins"][:2], [[0] * 4, [1] * 4])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_the_latch_leaves_a_callers_own_handling_alone() -> None:
    calls: list[int] = []

    def own(signum: int, frame: object) -> None:
        calls.append(signum)

    previous = signal.signal(signal.SIGINT, own)
    try:
        with CtrlCLatch() as latch:
            assert signal.getsignal(signal.SIGINT) is own
            signal.raise_signal(signal.SIGINT)  # a real Ctrl-C reaches the caller's handler, not the latch
            latch.check()  # never pressed as far as the latch knows
        assert calls == [signal.SIGINT] and signal.getsignal(signal.SIGINT) is own
    finally:
        signal.signal(signal.SIGINT, previous)

    seen: list[object] = []

    def in_a_thread() -> None:
        with CtrlCLatch():
            seen.append(signal.getsignal(signal.SIGINT))

    # outside the main thread signal.signal would raise ValueError and `seen` stay empty: the latch leaves it alone
    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGINT)]


def test_ctrl_c_stops_cleanly_and_keeps_rows(tmp_path: Path) -> None:
    # 400 tiny models take far longer than the wait for the first two, so the interrupt lands mid-training even
    # on a loaded machine (with 40, a poller descheduled for a second saw the run already finished)
    recipe = write_recipe(tmp_path / "r.yaml", {**SMALL_RECIPE, "subsets": {**SMALL_RECIPE["subsets"], "models": 400},
                                                 "training": {**SMALL_RECIPE["training"], "models_per_batch": 1}})
    store = tmp_path / "runs.h5"
    subprocess.run([sys.executable, "cli.py", "init", str(recipe), str(store)], cwd=ROOT, check=True,
                   capture_output=True)
    # The child gets the default SIGINT disposition even when the test runs in a background job, whose
    # shell starts it with SIGINT ignored (Python then never raises KeyboardInterrupt).
    process = subprocess.Popen([sys.executable, "cli.py", "train", str(store), "--workers", "2", "--quiet"],
                               cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline:
        with h5py.File(store, "r", locking=False) as f:
            if f["completed"][()].sum() >= 2:
                break
        time.sleep(0.2)
    assert process.poll() is None, "training finished before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does to the foreground group
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "error: interrupted; completed rows are kept, rerun the same command to resume"
    check = subprocess.run([sys.executable, "cli.py", "store", "validate", str(store)], cwd=ROOT,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    with h5py.File(store, "r") as f:
        done = f["completed"][()]
        assert 2 <= done.sum() < 400 and np.isfinite(f["margins"][()][done]).all()


def test_executor_registry_builds_each_executor_by_name() -> None:
    from dmtoolkit.run.base import EXECUTOR_NAMES, executor_class, make_executor
    from dmtoolkit.run.executors import LocalExecutor, SerialExecutor

    assert EXECUTOR_NAMES == ("local", "ray")
    # one local worker computes the built-in trainer in this process (SerialExecutor) and a recipe's own
    # trainer in a worker process, decided per store when it runs
    assert isinstance(make_executor("local", 1, "cpu"), LocalExecutor)
    assert isinstance(make_executor("local", 2, "cpu", timeout=5), LocalExecutor)
    assert make_executor("local", 2, "cpu", timeout=5).timeout == 5 and SerialExecutor("cpu").device == "cpu"
    assert executor_class("local") is LocalExecutor
    with pytest.raises(ValueError, match="unknown executor 'slurm'; choose one of local, ray"):
        make_executor("slurm", 1, "cpu")
    with pytest.raises(ValueError, match="address is for the ray executor"):
        make_executor("local", 2, "cpu", address="auto")


def test_run_has_no_import_cycle_and_ray_stays_optional() -> None:
    """base is imported by the executors, never the reverse; importing the local executors loads no Ray."""
    import ast

    run_dir = ROOT / "dmtoolkit" / "run"

    def imports(name: str) -> set[str]:
        tree = ast.parse((run_dir / f"{name}.py").read_text())
        return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}

    assert not imports("base") & {"dmtoolkit.run.executors", "dmtoolkit.run.ray_executor"}
    assert "dmtoolkit.run.ray_executor" not in imports("executors")
    assert "dmtoolkit.run.executors" not in imports("ray_executor")
    code = ("import sys, dmtoolkit.run.executors, dmtoolkit.run.driver; "
            "assert 'ray' not in sys.modules and 'dmtoolkit.run.ray_executor' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
