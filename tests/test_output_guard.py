"""The output guard (`dmtoolkit.atomic.check_output` / `replacing`) as every writing command meets it, and the
checks that keep a training run from writing into a file nobody can reach.

Each CLI case runs the real command and asserts exit code 1, exactly one `error:` line on stderr, no traceback,
and that the files it was pointed at are byte for byte (and kind for kind) what they were.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from dmtoolkit import atomic
from dmtoolkit.atomic import STALE_AFTER_SECONDS, check_output, remove_stale_temps, replacing, temp_path_for
from dmtoolkit.cli import cli
from dmtoolkit.errors import LockError, OutputError, StoreError
from dmtoolkit.lock import WriterLock
from dmtoolkit.store import RunStore
from dmtoolkit.store_import import alpha_tolerance, import_arrays

from .conftest import ROOT, SMALL_RECIPE
from .synthetic import linear_margins, synthetic_store

M, P, T = 48, 8, 5
LOCK_MESSAGE = "another writer holds the store"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fails(args: list[object], message: str, *, lock: Path | None = None) -> str:
    """Run the CLI; assert exit 1, one `error:` line on stderr containing `message`, no traceback."""
    args = [str(a) for a in args]
    if lock is None:
        result = CliRunner().invoke(cli, args)
    else:
        with WriterLock(lock):
            result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, (result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    return lines[0]


def _ok(args: list[object]) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Inputs for `store import`, an imported class-level store and its influence estimate."""
    d = tmp_path_factory.mktemp("guard")
    rng = np.random.default_rng(0)
    masks = rng.random((M, P)) < 0.5
    margins = linear_margins(masks, rng.normal(size=(P, T)), rng, noise=1.0)
    paths = {"masks": d / "masks.npy", "margins": d / "margins.npy", "store": d / "runs.h5", "influence": d / "infl.h5"}
    np.save(paths["masks"], masks.astype(np.uint8))
    np.save(paths["margins"], margins)
    import_arrays(paths["store"], masks, margins, target_labels=np.arange(T) % 3)
    _ok(["influence", paths["store"], "-o", paths["influence"]])
    return paths


@pytest.fixture()
def case(imported: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """Fresh copies of the module's files in this test's folder (the estimate names its copied store)."""
    out = {}
    for name, path in imported.items():
        out[name] = tmp_path / path.name
        shutil.copy(path, out[name])
    with h5py.File(out["influence"], "r+") as f:
        f.attrs["source_store"] = str(out["store"])
    return out


def _import(case: dict[str, Path], out: Path, *extra: object) -> list[object]:
    return ["store", "import", "-o", out, "--masks", case["masks"], "--margins", case["margins"], *extra]


# --- the guard itself ----------------------------------------------------------------------------------------

def test_check_output_says_what_a_non_regular_target_is(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    devnull = tmp_path / "null.h5"
    devnull.symlink_to("/dev/null")
    dangling = tmp_path / "dangling.h5"
    dangling.symlink_to(tmp_path / "nowhere.h5")
    for path, text in ((fifo, "is a named pipe (FIFO), not a regular file"),
                       (devnull, "is a symbolic link to /dev/null, a character device, not a regular file"),
                       (tmp_path, "is a directory, not a regular file"),
                       (dangling, "is a dangling symbolic link")):
        for force in (False, True):
            with pytest.raises(OutputError, match="^" + re.escape(f"{path}: {text}")):
                check_output(path, force=force)
    assert fifo.is_fifo() and os.readlink(devnull) == "/dev/null" and dangling.is_symlink()


def test_a_link_to_a_regular_file_writes_the_file_and_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    assert check_output(link, force=True) == real
    atomic.write_text_atomic(link, "new", force=True)
    assert link.is_symlink() and real.read_text() == "new"


def test_an_input_is_never_an_output_by_path_link_or_inode(tmp_path: Path) -> None:
    source = tmp_path / "in.h5"
    source.write_bytes(b"input")
    hard = tmp_path / "hard.h5"
    os.link(source, hard)
    soft = tmp_path / "soft.h5"
    soft.symlink_to(source)
    with pytest.raises(OutputError, match="is also an input of this command"):
        check_output(tmp_path / "." / "in.h5", force=True, inputs=[source])
    with pytest.raises(OutputError, match="is also an input of this command"):
        check_output(soft, force=True, inputs=[source])
    with pytest.raises(OutputError, match=f"is the same file as the input {source}"):
        check_output(hard, force=True, inputs=[source])
    assert source.read_bytes() == b"input" and check_output(tmp_path / "new.h5", force=False, inputs=[source])


def test_force_waits_for_no_writer_and_leaves_no_lock_file_behind(tmp_path: Path) -> None:
    out = tmp_path / "result.h5"
    out.write_bytes(b"old")
    with WriterLock(out):
        with pytest.raises(LockError, match=LOCK_MESSAGE):
            with replacing(out, force=True) as tmp:
                tmp.write_bytes(b"new")
    assert out.read_bytes() == b"old"
    with replacing(out, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.h5", "result.h5.lock"]  # the lock's own file
    (tmp_path / "result.h5.lock").unlink()
    atomic.write_bytes_atomic(out, b"newer", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.h5"]  # a lock file made only for this is gone


def test_without_force_an_output_that_appears_during_the_write_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "result.csv"
    with pytest.raises(OutputError, match="already exists; pass --force"):
        with replacing(out, force=False) as tmp:
            tmp.write_text("mine")
            out.write_text("someone else's")
    assert out.read_text() == "someone else's" and sorted(p.name for p in tmp_path.iterdir()) == ["result.csv"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    out = tmp_path / "runs.h5"
    host = temp_path_for(out).name.split(".")[-3]
    dead = tmp_path / f".runs.h5.{atomic.TEMP_MARK}.{host}.{_dead_pid()}.tmp"
    live = tmp_path / f".runs.h5.{atomic.TEMP_MARK}.{host}.{os.getppid()}.tmp"
    old_elsewhere = tmp_path / f".runs.h5.{atomic.TEMP_MARK}.otherhost.1.tmp"
    fresh_elsewhere = tmp_path / f".runs.h5.{atomic.TEMP_MARK}.otherhost.2.tmp"
    legacy = tmp_path / f".runs.h5.{_dead_pid()}.tmp"          # an earlier version's name: no host in it
    old_legacy = tmp_path / f".runs.h5.{_dead_pid()}.merge.h5"
    unrelated = tmp_path / ".other.h5.dmtoolkit-tmp.x.1.tmp"
    for path in (dead, live, old_elsewhere, fresh_elsewhere, legacy, old_legacy, unrelated):
        path.write_bytes(b"x" * 10)
    day_ago = time.time() - STALE_AFTER_SECONDS - 60
    os.utime(old_elsewhere, (day_ago, day_ago))
    os.utime(old_legacy, (day_ago, day_ago))
    assert sorted(remove_stale_temps(out)) == sorted([dead, old_elsewhere, old_legacy])
    # a fresh host-less temporary may belong to a live writer on another host sharing the folder: kept
    assert live.exists() and fresh_elsewhere.exists() and legacy.exists() and unrelated.exists()


def test_a_kill_9_during_store_import_leaves_a_temporary_the_next_import_removes(
        case: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "killed.h5"
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from dmtoolkit import store_import
        real = store_import._write_rows
        def write_then_die(*args, **kwargs):
            real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)  # as kill -9 mid-import: the temporary is complete but not renamed
        store_import._write_rows = write_then_die
        from dmtoolkit.cli import cli
        cli(["store", "import", "-o", {str(out)!r}, "--masks", {str(case["masks"])!r},
             "--margins", {str(case["margins"])!r}])
    """)
    child = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    left = [p for p in tmp_path.iterdir() if atomic.TEMP_MARK in p.name and p.name.startswith(".killed.h5.")]
    assert len(left) == 1 and left[0].stat().st_size > 0 and not out.exists()
    _ok(_import(case, out))
    assert not left[0].exists() and out.exists()


# --- every writing command routes through it -------------------------------------------------------------

def test_store_import_refuses_a_fifo_and_a_device_link(case: dict[str, Path], tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    _fails(_import(case, fifo, "--force"), "pipe.h5: is a named pipe (FIFO), not a regular file")
    assert fifo.is_fifo()
    null = tmp_path / "null.h5"
    null.symlink_to("/dev/null")
    _fails(_import(case, null, "--force"), "null.h5: is a symbolic link to /dev/null, a character device")
    assert null.is_symlink() and os.readlink(null) == "/dev/null"
    assert not [p for p in tmp_path.iterdir() if atomic.TEMP_MARK in p.name]


@pytest.mark.parametrize("command", ["influence", "datamodels", "gradient", "replay"])
def test_an_estimator_never_overwrites_its_run_store(case: dict[str, Path], command: str) -> None:
    store = case["store"]
    before = _digest(store)
    _fails([command, store, "-o", store, "--force"], "is also an input of this command")
    assert _digest(store) == before


def test_an_estimator_refuses_a_hard_link_to_its_run_store(case: dict[str, Path], tmp_path: Path) -> None:
    link = tmp_path / "other-name.h5"
    os.link(case["store"], link)
    before = _digest(case["store"])
    _fails(["influence", case["store"], "-o", link, "--force"], "is the same file as the input")
    assert _digest(case["store"]) == before


def test_store_import_never_overwrites_its_inputs(case: dict[str, Path]) -> None:
    for victim in (case["masks"], case["margins"]):
        before = _digest(victim)
        _fails(_import(case, victim, "--force"), "is also an input of this command")
        assert _digest(victim) == before


def test_store_merge_never_overwrites_a_shard(case: dict[str, Path], tmp_path: Path) -> None:
    shard = synthetic_store(tmp_path / "shard.h5", np.ones((4, 3), np.float32), completed=np.array([1, 1, 0, 0], bool))
    before = _digest(shard)
    _fails(["store", "merge", shard, "-o", shard, "--force"], "is also an input of this command")
    assert _digest(shard) == before


def test_init_never_overwrites_its_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(SMALL_RECIPE))
    before = _digest(recipe)
    _fails(["init", recipe, recipe, "--force"], "is also an input of this command")
    assert _digest(recipe) == before


def test_counterfactual_refuses_its_influence_as_output_before_training(case: dict[str, Path], tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(SMALL_RECIPE))
    before = _digest(case["influence"])
    _fails(["counterfactual", recipe, "--influence", case["influence"], "-o", case["influence"], "--force"],
           "is also an input of this command")
    _fails(["counterfactual", recipe, "--influence", case["influence"], "-o", tmp_path / "cf.h5", "--png", recipe,
            "--force"], "is also an input of this command")
    assert _digest(case["influence"]) == before


def test_figures_and_pages_never_overwrite_their_inputs(case: dict[str, Path], tmp_path: Path) -> None:
    est, store = case["influence"], case["store"]
    before = {p: _digest(p) for p in (est, store)}
    _fails(["rank", est, "--png", est, "--force"], "is also an input of this command")
    _fails(["rank", est, "--png", store, "--force"], "is also an input of this command")  # the recorded store
    _fails(["subpop", est, "--class", "class 0", "--png", store, "--force"], "is also an input of this command")
    _fails(["leakage", est, "--csv", est, "--force"], "is also an input of this command")
    _fails(["leakage", est, "--html", store, "--force"], "is also an input of this command")
    _fails(["leakage", est, "--html", tmp_path / "a.out", "--csv", tmp_path / "a.out"], "given for two outputs")
    existing = tmp_path / "rank.png"
    existing.write_bytes(b"not yet a figure")
    _fails(["rank", est, "--png", existing], "rank.png: already exists; pass --force to overwrite it")
    assert existing.read_bytes() == b"not yet a figure"
    _ok(["rank", est, "--png", existing, "--force"])
    assert existing.read_bytes()[:4] == b"\x89PNG"
    assert {p: _digest(p) for p in (est, store)} == before


def test_force_is_refused_while_training_holds_the_store(case: dict[str, Path], tmp_path: Path) -> None:
    """`store import -o STORE --force` and `influence X -o STORE --force` while a writer holds STORE."""
    target = tmp_path / "trained.h5"
    shutil.copy(case["store"], target)
    before = _digest(target)
    _fails(_import(case, target, "--force"), LOCK_MESSAGE, lock=target)
    _fails(["influence", case["store"], "-o", target, "--force"], LOCK_MESSAGE, lock=target)
    assert _digest(target) == before
    holder = subprocess.Popen(  # a real other process holding the lock, as `dmtoolkit train` does
        [sys.executable, "-c", "import sys, time; from dmtoolkit.lock import WriterLock; "
         f"lock = WriterLock({str(target)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = _fails(["store", "merge", case["store"], "-o", target, "--force"], LOCK_MESSAGE)
        assert f"pid {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()
    assert _digest(target) == before
    _ok(["influence", case["store"], "-o", target, "--force"])  # with the writer gone, --force replaces
    assert _digest(target) != before


def test_report_needs_force_to_replace_its_page_and_prints_no_warning(case: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(3)
    masks = rng.random((16, 6)) < 0.5
    margins = linear_margins(masks, rng.normal(size=(6, 4)), rng, noise=1.0)
    done = np.zeros(16, bool)
    done[:12] = True  # 4 held-out models: some bootstrap draws repeat one model (the old NaN interval)
    import_arrays(folder / "runs.h5", masks, margins, completed=done, kind="example")
    _ok(["influence", folder / "runs.h5", "-o", folder / "infl.h5", "--holdout-frac", "0.3"])
    out = tmp_path / "report"
    out.mkdir()
    (out / "index.html").write_text("my notes")
    _fails(["report", folder, "-o", out], "index.html: already exists; pass --force")
    assert (out / "index.html").read_text() == "my notes" and not (out / "report.json").exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(cli, ["report", str(folder), "-o", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]
    assert "Warning" not in result.stderr
    assert "<html" in (out / "index.html").read_text().lower() and (out / "report.json").exists()


# --- inputs that are not what they seem (item 8) and --alpha (item 9) ----------------------------------------

def test_empty_and_device_inputs_are_named(case: dict[str, Path], tmp_path: Path) -> None:
    empty_npy, empty_npz = tmp_path / "empty.npy", tmp_path / "empty.npz"
    empty_npy.touch()
    empty_npz.touch()
    zero = tmp_path / "zero.npy"
    zero.symlink_to("/dev/zero")
    out = tmp_path / "out.h5"
    _fails(["store", "import", "-o", out, "--masks", empty_npy, "--margins", case["margins"]],
           "empty.npy: empty file (0 bytes); expected the masks array")
    _fails(["store", "import", "-o", out, "--npz", empty_npz], "empty.npz: empty file (0 bytes)")
    _fails(["store", "import", "-o", out, "--masks", case["masks"], "--margins", zero],
           "zero.npy: is a symbolic link to /dev/zero, a character device, not a regular file")
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(case["masks"], folder / "masks.npy")
    (folder / "margins.npy").symlink_to("/dev/zero")
    _fails(["store", "import", "-o", out, "--folder", folder], "is a symbolic link to /dev/zero")
    assert not out.exists()


def test_an_alpha_that_disagrees_with_the_masks_is_refused(case: dict[str, Path], tmp_path: Path) -> None:
    mean = float(np.load(case["masks"]).mean())
    tolerance = alpha_tolerance(0.01, M * P)
    assert abs(0.01 - mean) > tolerance
    line = _fails(_import(case, tmp_path / "a.h5", "--alpha", "0.01"), "--alpha 0.01 disagrees with the masks")
    assert f"{mean:.4f}" in line and "3 binomial standard errors + 0.05" in line
    assert not (tmp_path / "a.h5").exists()
    _ok(_import(case, tmp_path / "b.h5", "--alpha", "0.5"))
    with RunStore(tmp_path / "b.h5") as store:
        assert store.subset_fraction == 0.5


# --- train: the open file must still be the file at its path (item 1) ----------------------------------------

def _pending_store(tmp_path: Path) -> Path:
    return synthetic_store(tmp_path / "runs.h5", np.ones((6, 4), np.float32), completed=np.array([1, 1, 0, 0, 0, 0], bool))


def _row(store: RunStore, index: int) -> None:
    store.write_row(index, np.full(store.num_targets, 0.5, np.float32), seed=index, source_accuracy=0.5,
                    target_accuracy=0.5, seconds=0.1)


def test_a_replaced_store_stops_the_writer_and_its_rows_are_rescued(tmp_path: Path) -> None:
    path = _pending_store(tmp_path)
    store = RunStore(path, writable=True)
    try:
        _row(store, 2)
        intruder = tmp_path / "estimate.h5"
        intruder.write_bytes(b"what --force wrote")
        os.replace(intruder, path)  # what `influence OTHER -o STORE --force` did before the guard
        with pytest.raises(StoreError, match="was replaced by another file while training; stopped writing: "
                                             "1 row written by this run and every row completed before are kept in"):
            _row(store, 3)
    finally:
        store.close()
    assert path.read_bytes() == b"what --force wrote"
    (rescued,) = tmp_path.glob("runs.h5.rescued-*.h5")
    with RunStore(rescued) as kept:
        assert kept.completed_rows().tolist() == [0, 1, 2]


def test_a_moved_store_is_reported_at_the_end_of_the_run(tmp_path: Path) -> None:
    path = _pending_store(tmp_path)
    with pytest.raises(StoreError, match="was moved or deleted while training; stopped writing: the open file still exists "
                                         "under another name"):
        with RunStore(path, writable=True) as store:
            _row(store, 2)
            os.rename(path, tmp_path / "moved.h5")
    with RunStore(tmp_path / "moved.h5") as kept:
        assert kept.completed_rows().tolist() == [0, 1, 2]
    assert not list(tmp_path.glob("*.rescued-*"))


def test_train_cli_fails_in_one_line_when_its_store_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real `train` command: the store is replaced after the first row arrives; no success line."""
    path = _pending_store(tmp_path)
    from dmtoolkit.run import driver

    real_write = RunStore.write_row
    calls = []

    def write_then_replace(self: RunStore, index: int, *args: object, **kwargs: object) -> None:
        real_write(self, index, *args, **kwargs)
        calls.append(index)
        if len(calls) == 1:
            replacement = tmp_path / "replacement.h5"
            replacement.write_bytes(b"not the store")
            os.replace(replacement, path)

    class OneRowAtATime:
        def run(self, store_path: Path, groups: list[int]):
            from dmtoolkit.run.base import GroupOutcome, ModelResult

            for g in groups:
                results = [ModelResult(index=i, margins=np.zeros(4, np.float32), seed=i, source_accuracy=0.5,
                                       target_accuracy=0.5, seconds=0.1, predictions=None) for i in (2, 3, 4, 5)]
                yield GroupOutcome(group=g, results=results)

        def close(self) -> None:
            pass

    monkeypatch.setattr(RunStore, "write_row", write_then_replace)
    monkeypatch.setattr("dmtoolkit.run.executors.make_executor", lambda *a, **k: OneRowAtATime())
    line = _fails(["train", path, "--quiet", "--workers", "1"], "was replaced by another file while training")
    assert "1 row written by this run" in line and calls == [2]
    assert path.read_bytes() == b"not the store"
    assert driver is not None


def test_the_lock_is_the_files_whichever_link_names_it(case: dict[str, Path], tmp_path: Path) -> None:
    real = tmp_path / "real.h5"
    shutil.copy(case["store"], real)
    link = tmp_path / "latest.h5"
    link.symlink_to(real)
    before = _digest(real)
    _fails(["influence", case["store"], "-o", real, "--force"], LOCK_MESSAGE, lock=link)  # trained as latest.h5
    _fails(["store", "import", "-o", link, "--masks", case["masks"], "--margins", case["margins"], "--force"],
           LOCK_MESSAGE, lock=real)
    assert _digest(real) == before and link.is_symlink()


def test_a_locked_output_that_is_not_a_store_is_named_as_a_file_being_written(tmp_path: Path) -> None:
    """--force on a page another process is writing: the line speaks of that file, not of a store."""
    out = tmp_path / "page.html"
    out.write_text("old")
    with WriterLock(out), pytest.raises(OutputError, match=r"page.html: another dmtoolkit process is writing it "
                                                           r"\(pid \d+ on host"):
        atomic.write_text_atomic(out, "new", force=True)
    assert out.read_text() == "old"
