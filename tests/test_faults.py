"""Fault injection: `dmtoolkit train` SIGKILLed (whole process group) at random moments, many during writes.

After every kill the store must open, `dmtoolkit store validate` must pass, the dead writer's lock must
be recovered, and every row completed before the kill must still be completed with identical bytes.
Resuming then completes the store with the margins of an uninterrupted run of the same recipe and seed.

Why it holds (see dmtoolkit/store.py): after the atomic create no HDF5 metadata changes; a row write
overwrites preallocated raw bytes, is flushed and fsynced, and only then is `completed[i]` set (flushed and
fsynced again). A kill leaves at worst a row whose data are (partly) written but whose flag is unset; resume
recomputes it. The flock of the lock file dies with its holder.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner, Result

from dmtoolkit.cli import cli
from dmtoolkit.lock import WriterLock, lock_path_for

from .conftest import ROOT, SMALL_RECIPE, write_recipe

ROW_FIELDS = ("margins", "seed", "source_accuracy", "target_accuracy", "seconds")


def _recipe(models: int) -> dict:
    recipe = copy.deepcopy(SMALL_RECIPE)
    recipe["name"] = "fault-injection"
    recipe["subsets"]["models"] = models
    recipe["training"]["models_per_batch"] = 2
    return recipe


def _cli(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


@dataclass
class Prepared:
    recipe: Path
    template: Path  # an initialised, untrained store
    reference: dict[str, np.ndarray]  # an uninterrupted run of the same store


def _prepare(tmp: Path, models: int) -> Prepared:
    recipe = write_recipe(tmp / "faults.yaml", _recipe(models))
    template, reference = tmp / "template.h5", tmp / "reference.h5"
    result = _cli("init", recipe, template)
    assert result.exit_code == 0, result.output
    shutil.copy(template, reference)
    result = _cli("train", reference, "--workers", "1", "--quiet")
    assert result.exit_code == 0, result.output
    with h5py.File(reference, "r") as f:
        assert f["completed"][()].all()
        return Prepared(recipe, template, {name: f[name][()] for name in ROW_FIELDS})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return _prepare(tmp_path_factory.mktemp("faults"), 24)


def _train_process(store: Path, workers: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "cli.py", "train", str(store), "--workers", str(workers), "--quiet"],
                            cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill(proc: subprocess.Popen) -> bool:
    """SIGKILL the writer and its workers (its process group); False when it had already exited."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20  # and wait for its workers to be gone too
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)
    proc.error_output = proc.stderr.read().decode(errors="replace")[-2000:]
    proc.stderr.close()
    return proc.returncode == -signal.SIGKILL


def _snapshot(store: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with h5py.File(store, "r", locking=False) as f:
        return f["completed"][()].astype(bool), {name: f[name][()] for name in ROW_FIELDS}


@dataclass
class FaultReport:
    kills: int = 0
    triggered_by_write: int = 0  # killed within a few ms of seeing the store's bytes change
    torn_rows: int = 0  # rows whose data reached the file but whose completed flag did not: killed mid-row
    kills_leaving_torn_rows: int = 0
    stale_locks_recovered: int = 0  # kills that came after the writer had taken its lock
    started_but_not_killed: int = 0  # runs that finished (or failed) before the kill came
    refills: int = 0  # times the store was full before enough kills and started over
    rows_lost: int = 0
    rows_changed: int = 0
    completed_after_kill: list[int] = field(default_factory=list)


def _wait_for_writes(store: Path, proc: subprocess.Popen, changes: int, timeout: float) -> bool:
    """Poll the store's mtime until it has changed `changes` times (the writer is writing right now)."""
    last, seen, deadline = os.stat(store).st_mtime_ns, 0, time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        now = os.stat(store).st_mtime_ns
        if now != last:
            last, seen = now, seen + 1
            if seen >= changes:
                return True
        time.sleep(0.0002)
    return False


def _same_rows(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> np.ndarray:
    """Per row: every field holds the same bytes in a and b."""
    return np.all([(a[n].view(np.uint8) == b[n].view(np.uint8)).reshape(len(a[n]), -1).all(axis=1)
                   for n in ROW_FIELDS], axis=0)


def inject_faults(store: Path, template: Path, kills: int, seed: int,
                  reference: dict[str, np.ndarray] | None = None) -> FaultReport:
    """Run train, SIGKILL it, check the store; repeat until `kills` kills landed.

    Should the store fill up first (a fast machine), it starts over from the untrained `template`.
    """
    rng = np.random.default_rng(seed)
    report = FaultReport()
    before_done, before_rows = _snapshot(store)
    rounds = 0
    while report.kills < kills:
        if before_done.all():
            report.refills += 1
            shutil.copy(template, store)
            before_done, before_rows = _snapshot(store)
        rounds += 1
        assert rounds <= 3 * kills, f"the writer kept finishing before it could be killed: {report}"
        workers = 2 if rng.random() < 0.2 else 1
        proc = _train_process(store, workers)
        if rng.random() < 0.8:
            # the first change is the open (HDF5 marks the superblock); later ones are row writes,
            # about five per row (data flush, fsync, flag, flush, fsync)
            hit = _wait_for_writes(store, proc, int(rng.integers(2, 14)), timeout=60)
            time.sleep(float(rng.uniform(0, 0.003)))
            report.triggered_by_write += hit
        elif rng.random() < 0.4:
            time.sleep(float(rng.uniform(0.2, 3.0)))  # mostly during start-up (imports, loading the data)
        else:  # after the writer opened the store: mostly while computing, sometimes while writing
            _wait_for_writes(store, proc, 1, timeout=60)
            time.sleep(float(rng.uniform(0, 0.8)))
        if not _kill(proc):
            assert proc.returncode == 0, f"train failed on its own (exit {proc.returncode}): {proc.error_output}"
            report.started_but_not_killed += 1
        else:
            report.kills += 1

        # the dead writer's lock is stale: the next writer takes it over
        lock = WriterLock(store).acquire()
        report.stale_locks_recovered += lock.recovered_stale
        lock.release()
        # HDF5 marks the superblock "open for writing" while a writer has the file open, and a kill leaves
        # that mark behind; superblock versions 0-1 ignore it (version 3 would refuse to open the file).
        assert store.read_bytes()[8] in (0, 1), "superblock version changed: a stale write mark would lock users out"
        # the store opens and validates
        result = _cli("store", "validate", store)
        assert result.exit_code == 0, result.output
        done, rows = _snapshot(store)
        lost = before_done & ~done
        same = _same_rows(rows, before_rows)
        changed = before_done & done & ~same
        report.rows_lost += int(lost.sum())
        report.rows_changed += int(changed.sum())
        if reference is not None:  # and every completed row is the one an uninterrupted run writes
            np.testing.assert_allclose(rows["margins"][done], reference["margins"][done], atol=1e-5, rtol=0)
        written = (rows["seed"] != -1) | ~np.isnan(rows["margins"]).all(axis=1)
        torn = ~done & written & ~same  # half-written by the run just killed
        report.torn_rows += int(torn.sum())
        report.kills_leaving_torn_rows += bool(torn.any())
        report.completed_after_kill.append(int(done.sum()))
        assert not lost.any(), f"completed rows lost after a kill: {np.flatnonzero(lost)}"
        assert not changed.any(), f"completed rows changed after a kill: {np.flatnonzero(changed)}"
        before_done, before_rows = done, rows
    return report


def _run_fault_injection(prepared: Prepared, tmp_path: Path, kills: int, seed: int) -> FaultReport:
    store = tmp_path / "killed.h5"
    shutil.copy(prepared.template, store)
    report = inject_faults(store, prepared.template, kills, seed, prepared.reference)
    print(f"\nfault injection: {report}")
    assert report.kills >= kills, report
    assert report.rows_lost == 0 and report.rows_changed == 0
    # resume to completion: same rows as the uninterrupted run
    result = _cli("train", store, "--workers", "1", "--quiet")
    assert result.exit_code == 0, result.output
    done, rows = _snapshot(store)
    assert done.all()
    np.testing.assert_allclose(rows["margins"], prepared.reference["margins"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(rows["seed"], prepared.reference["seed"])
    np.testing.assert_allclose(rows["target_accuracy"], prepared.reference["target_accuracy"], atol=1e-6)
    assert _cli("store", "validate", store).exit_code == 0
    return report


def test_kill_during_training_loses_nothing(prepared: Prepared, tmp_path: Path) -> None:
    report = _run_fault_injection(prepared, tmp_path, kills=8, seed=7)
    assert report.triggered_by_write >= 4 and report.stale_locks_recovered >= 3


@pytest.mark.slow
def test_many_kills_lose_nothing(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    prepared = _prepare(tmp_path_factory.mktemp("faults-slow"), 48)
    report = _run_fault_injection(prepared, tmp_path, kills=24, seed=int(os.environ.get("DMTOOLKIT_FAULT_SEED", "2024")))
    assert report.triggered_by_write >= 12


def test_second_writer_is_refused_naming_the_holder_and_stale_lock_recovered(prepared: Prepared, tmp_path: Path) -> None:
    store = tmp_path / "busy.h5"
    shutil.copy(prepared.template, store)
    proc = _train_process(store, 1)
    try:
        deadline = time.monotonic() + 60
        while "pid" not in (lock_path_for(store).read_text() if lock_path_for(store).exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, "the writer never took the lock"
            time.sleep(0.02)
        before = store.stat().st_size
        for args in (["train", store, "--quiet", "--workers", "1"],
                     ["init", prepared.recipe, store, "--force"]):
            result = _cli(*args)
            assert result.exit_code == 1, result.output
            line = result.output.strip()
            assert "\n" not in line and line.startswith("error: ")
            assert f"another writer holds the store (pid {proc.pid} on host {socket.gethostname()}" in line
        assert store.stat().st_size == before
    finally:
        assert _kill(proc)
    assert f"pid {proc.pid}" in lock_path_for(store).read_text()  # the killed holder never released it
    lock = WriterLock(store).acquire()
    assert lock.recovered_stale
    lock.release()
    assert _cli("store", "validate", store).exit_code == 0
