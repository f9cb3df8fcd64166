"""The attack matrix: every command that reads or writes a file, crossed with a corpus of bad inputs.

Each row runs the real CLI (in process, or as a subprocess where the attack could kill the test process)
in a folder of its own, made from one set of valid files: a class-level and an example-level run store,
their estimates and the arrays a store import reads. The corpus is generated here: renamed, reshaped and
truncated datasets, zero-byte files, FIFOs, a device node and a symlink to one, a directory in place of a
file, an output that is one of the inputs, an output locked by a live writer, a stale estimate. Every row
asserts the same four things: the exit code, one line on stderr starting "error:" that contains the
row's words, no traceback, and every file that existed before has the same bytes and mtime afterwards
(the only new file allowed is an empty `.lock`).

To add a row: append an `Attack` to the list for its group (or a new corruption to `STORE_CORRUPTIONS` /
`ESTIMATE_CORRUPTIONS`, which are crossed with every command that reads that kind of file).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dmtoolkit.cli import cli
from dmtoolkit.lock import WriterLock
from dmtoolkit.store import RunStore

from .corpus import BOMB, TRAINER_SOURCE
from .synthetic import synthetic_store

ROOT = Path(__file__).resolve().parent.parent
M, T, P = 16, 5, 6


# --- the valid files every row starts from ---------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs.h5 (class level, 12 of 16 rows done) + inf.h5; xruns.h5 (example level) + xinf.h5; import arrays."""
    import warnings

    from dmtoolkit.estimate import compute_influence

    folder = tmp_path_factory.mktemp("attack-base")
    rng = np.random.default_rng(0)
    done = np.ones(M, bool)
    done[-4:] = False
    synthetic_store(folder / "runs.h5", rng.normal(size=(M, T)).astype(np.float32), completed=done, antithetic=True)
    xmasks = rng.random((M, 8)) < 0.5
    synthetic_store(folder / "xruns.h5", rng.normal(size=(M, T)).astype(np.float32), masks=xmasks, kind="example",
                    completed=done)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compute_influence(folder / "runs.h5", folder / "inf.h5", device="cpu", holdout_frac=0.25)
        compute_influence(folder / "xruns.h5", folder / "xinf.h5", device="cpu", holdout_frac=0.25)
    np.save(folder / "masks.npy", rng.random((M, P)) < 0.5)
    np.save(folder / "margins.npy", rng.normal(size=(M, T)).astype(np.float32))
    return folder


# --- corruptions of one file -----------------------------------------------------------------------------
def _rename(dataset: str) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            f.move(dataset, dataset + "_renamed")
    return change


def _reshape(dataset: str, rows: int | None = None, cols: int | None = None) -> Callable[[Path], None]:
    """Recreate `dataset` with fewer rows and/or columns (same dtype and attributes)."""
    def change(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            data, attrs = f[dataset][()], dict(f[dataset].attrs)
            del f[dataset]
            data = data[:rows] if rows is not None else data
            data = data[..., :cols] if cols is not None else data
            f[dataset] = data
            f[dataset].attrs.update(attrs)
    return change


def _retype(dataset: str, dtype: str) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            data = f[dataset][()]
            del f[dataset]
            f[dataset] = data.astype(dtype)
    return change


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _device_symlink(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _stale(estimate: str) -> Callable[[Path], None]:
    """More rows trained into the estimate's store after the estimate was made (`path` is the store)."""
    def change(path: Path) -> None:
        with RunStore(path, writable=True) as store:
            row = int(store.pending_rows()[0])
            store.write_row(row, np.zeros(store.num_targets, np.float32), seed=row, source_accuracy=0.5,
                            target_accuracy=0.5, seconds=0.1)
    return change


@dataclass(frozen=True)
class Corruption:
    id: str
    change: Callable[[Path], None]
    message: str  # words the one error line must contain
    code: int = 1
    listed: str = ""  # words `store validate` lists the problem with, where they differ


STORE_CORRUPTIONS = [
    Corruption("masks-renamed", _rename("masks"), "masks"),
    Corruption("margins-renamed", _rename("margins"), "margins"),
    Corruption("margins-short", _reshape("margins", cols=T - 1), "damaged run store", listed="found int16 (16, 5)"),
    Corruption("completed-short", _reshape("completed", rows=M - 3), "damaged run store", listed="completed: expected"),
    Corruption("masks-float", _retype("masks", "float32"), "masks"),
    Corruption("zero-bytes", _zero_bytes, "empty"),
    Corruption("fifo", _fifo, "not a regular file"),
    Corruption("device-symlink", _device_symlink, "not a regular file"),
    Corruption("directory", _directory, "directory", code=2),
]
ESTIMATE_CORRUPTIONS = [
    Corruption("coef-cut", _reshape("coef", rows=P - 1), "coef"),
    Corruption("coef-renamed", _rename("coef"), "coef"),
    Corruption("intercept-short", _reshape("intercept", rows=T - 2), "intercept"),
    Corruption("zero-bytes", _zero_bytes, "empty"),
    Corruption("fifo", _fifo, "not a regular file"),
    Corruption("device-symlink", _device_symlink, "not a regular file"),
]

# commands that read a run store ({s}: the store; x-prefixed: the example-level one)
STORE_READERS = {
    "store-info": ["store", "info", "{s}"],
    "store-validate": ["store", "validate", "{s}"],
    "influence": ["influence", "{s}", "-o", "{d}/new.h5"],
    "datamodels": ["datamodels", "{s}", "-o", "{d}/new.h5"],
    "evaluate": ["evaluate", "{s}", "--estimate", "{d}/inf.h5"],
    "reliability": ["reliability", "{s}"],
    "train": ["train", "{s}", "--workers", "1", "--quiet"],
    "report": ["report", "{d}", "-o", "{d}/out"],
}
# commands that read an estimate ({e}: the estimate)
ESTIMATE_READERS = {
    "rank": ["rank", "{e}"],
    "recommend": ["recommend", "{e}"],
    "subpop": ["subpop", "{e}", "--class", "c0"],
    "explain": ["explain", "{e}", "--target", "0"],
    "evaluate": ["evaluate", "{d}/runs.h5", "--estimate", "{e}"],
    "leakage": ["leakage", "{xe}", "--no-features"],
    "mislabels": ["mislabels", "{xe}"],
    "report": ["report", "{d}", "-o", "{d}/out"],
}


@dataclass(frozen=True)
class Attack:
    id: str
    args: list[str]
    message: str
    code: int = 1
    target: str = ""  # file (relative to the folder) the change applies to
    change: Callable[[Path], None] | None = None
    locked: str = ""  # file whose writer lock a live writer holds during the run
    subprocess: bool = False  # run as `python cli.py …` (the attack could kill the test process)
    setup: Callable[[Path], None] | None = None  # extra files
    trains: str = ""  # a store the command may add rows to: its completed rows must stay, bytes may change


def _fill(args: list[str], estimate: str) -> list[str]:
    xe = "{d}/xinf.h5" if estimate == "inf.h5" else "{d}/" + estimate
    return [a.replace("{e}", "{d}/" + estimate).replace("{xe}", xe) for a in args]


def _store_attacks() -> list[Attack]:
    attacks = []
    for name, args in STORE_READERS.items():
        for c in STORE_CORRUPTIONS:
            if name == "report" and c.id == "directory":
                continue  # a folder named runs.h5 inside the report's input folder is not an input file
            message = c.listed if name == "store-validate" and c.listed else c.message
            code = c.code
            if name == "report" and c.code == 2:
                code = 1
            attacks.append(Attack(f"{name}/store-{c.id}", [a.replace("{s}", "{d}/runs.h5") for a in args],
                                  message, code, target="runs.h5", change=c.change))
    return attacks


def _estimate_attacks() -> list[Attack]:
    attacks = []
    for name, args in ESTIMATE_READERS.items():
        example = "{xe}" in " ".join(args)
        estimate = "xinf.h5" if example else "inf.h5"
        for c in ESTIMATE_CORRUPTIONS:
            attacks.append(Attack(f"{name}/estimate-{c.id}", _fill(args, estimate), c.message, c.code,
                                  target=estimate, change=c.change))
        store = "xruns.h5" if example else "runs.h5"
        if name == "report":
            continue  # the report of a folder with a stale estimate renders the rest and says so (tested elsewhere)
        # the copied estimate names the base folder's store: point it at this folder's (stale) one
        where = [] if name == "evaluate" else ["--store", "{d}/" + store]
        attacks.append(Attack(f"{name}/estimate-stale", [*_fill(args, estimate), *where],
                              "was not computed from", target=store, change=_stale(estimate)))
    return attacks


def _mknod_null(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))


# commands that write a file, and where: {o} is the output path the attack makes hostile
WRITERS = {
    "init": (["init", "{d}/r.yaml", "{o}", "--force"], "new.h5"),
    "store-import": (["store", "import", "-o", "{o}", "--masks", "{d}/masks.npy", "--margins", "{d}/margins.npy",
                      "--force"], "new.h5"),
    "store-merge": (["store", "merge", "{d}/runs.h5", "-o", "{o}", "--force"], "new.h5"),
    "influence": (["influence", "{d}/runs.h5", "-o", "{o}", "--force"], "new.h5"),
    "datamodels": (["datamodels", "{d}/xruns.h5", "-o", "{o}", "--force"], "new.h5"),
    "leakage-csv": (["leakage", "{d}/xinf.h5", "--no-features", "--csv", "{o}", "--force"], "pairs.csv"),
    "leakage-html": (["leakage", "{d}/xinf.h5", "--no-features", "--html", "{o}", "--force"], "page.html"),
}


def _write_recipe(folder: Path) -> None:
    from .conftest import SMALL_RECIPE, write_recipe

    write_recipe(folder / "r.yaml", SMALL_RECIPE)


def _writer_attacks() -> list[Attack]:
    attacks = []
    for name, (args, default) in WRITERS.items():
        setup = _write_recipe if name == "init" else None
        inputs = [a for a in args if a.startswith("{d}/")]
        hostile = [
            ("fifo", default, lambda p: os.mkfifo(p), "not a regular file", ""),
            ("device-node", default, _mknod_null, "not a regular file", ""),
            ("symlink-to-device", default, lambda p: p.symlink_to("/dev/null"), "not a regular file", ""),
            ("input-as-output", inputs[0][len("{d}/"):], None, "is also an input", ""),
        ]
        if name not in ("leakage-csv", "leakage-html"):  # another store, being trained, as the output
            live = "xruns.h5" if "{d}/runs.h5" in args else "runs.h5"
            hostile.append(("locked-by-a-writer", live, None, "another writer holds", live))
        for attack_id, out, make, message, locked in hostile:
            if attack_id == "device-node" and os.geteuid() != 0:
                continue

            def prepare(folder: Path, make=make, out=out, setup=setup) -> None:
                if setup:
                    setup(folder)
                if make:
                    make(folder / out)
            attacks.append(Attack(f"{name}/output-{attack_id}", [a.replace("{o}", "{d}/" + out) for a in args],
                                  message, setup=prepare, locked=locked))
    return attacks


def _alias_bomb(folder: Path) -> None:
    (folder / "bomb.yaml").write_text(BOMB)


def _huge_labels(folder: Path) -> None:
    np.savez(folder / "in.npz", masks=np.load(folder / "masks.npy"), margins=np.load(folder / "margins.npy"),
             target_labels=np.array([0, 1, 10**9, 1, 0]))


def _dying_trainer(folder: Path) -> None:
    """A plug-in trainer that kills its own process (os._exit(0)) on row 2, and a store of 4 rows for it."""
    import yaml

    (folder / "deaths.py").write_text(TRAINER_SOURCE)
    (folder / "POISON").write_text("")
    recipe = {"name": "deaths", "trainer": {"function": "deaths:os_exits", "options": {"dies_on": 2}},
              "subsets": {"kind": "class", "alpha": 0.5, "models": 4, "seed": 1},
              "own_data": {"unit_names": list("abcdef"), "target_labels": [0, 1, 1, 0, 1]}}
    (folder / "deaths.yaml").write_text(yaml.safe_dump(recipe))
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "init", "deaths.yaml", "dies.h5"], cwd=folder,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr


def _imported_example_store(folder: Path) -> None:
    from dmtoolkit.store_import import ImportArrays, import_store

    import_store(folder / "imp.h5", ImportArrays(masks=np.load(folder / "masks.npy"),
                                                 margins=np.load(folder / "margins.npy")), kind="example")


# inputs that are costly to read or run: each its own row
SPECIAL = [
    Attack("init/alias-bomb", ["init", "{d}/bomb.yaml", "{d}/new.h5"], "YAML aliases are not allowed in recipes",
           setup=_alias_bomb),
    Attack("store-import/huge-label", ["store", "import", "-o", "{d}/new.h5", "--npz", "{d}/in.npz"],
           "target labels hold class index 1000000000", setup=_huge_labels),
    *(Attack(f"{name}/imported-store", [name, "{d}/imp.h5", "-o", "{d}/new.h5"], "an imported store has no recipe",
             setup=_imported_example_store) for name in ("gradient", "replay")),
    Attack("train/trainer-exits", ["train", "{d}/dies.h5", "--workers", "1", "--quiet"],
           "died on row 2: its worker process exited with code 0", subprocess=True, setup=_dying_trainer,
           trains="dies.h5"),
]

ATTACKS = _store_attacks() + _estimate_attacks() + _writer_attacks() + SPECIAL


def _fingerprint(folder: Path) -> dict[str, tuple[str, bytes, int]]:
    """Every entry below `folder` (not following links): its kind, bytes (regular files) and mtime."""
    prints = {}
    for p in sorted(folder.rglob("*")):
        if p.name.endswith(".lock"):
            continue  # a writer's lock file: taken and released (emptied) by every writer, checked below
        st = p.lstat()
        kind = stat.S_IFMT(st.st_mode)
        data = p.read_bytes() if stat.S_ISREG(st.st_mode) else os.readlink(p).encode() if p.is_symlink() else b""
        prints[str(p.relative_to(folder))] = (kind, data, st.st_mtime_ns)
    return prints


def _run(attack: Attack, folder: Path) -> tuple[int, str, str]:
    args = [a.format(d=folder) for a in attack.args]
    if attack.subprocess:
        done = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=folder, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        return done.returncode, done.stdout, done.stderr
    with warnings.catch_warnings(record=True) as caught:  # a user would see each as a line on stderr
        warnings.simplefilter("always")
        result = CliRunner().invoke(cli, args)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    shown = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, DeprecationWarning)]
    return result.exit_code, result.stdout, result.stderr + "".join(f"{line}\n" for line in shown)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_attack(attack: Attack, base: Path, tmp_path: Path) -> None:
    folder = tmp_path / "case"
    shutil.copytree(base, folder)
    if attack.setup:
        attack.setup(folder)
    if attack.change:
        attack.change(folder / attack.target)
    before = _fingerprint(folder)
    trained = RunStore(folder / attack.trains).completed_mask() if attack.trains else None
    if attack.trains:
        del before[attack.trains]
    if attack.locked:
        with WriterLock(folder / attack.locked):
            code, out, err = _run(attack, folder)
    else:
        code, out, err = _run(attack, folder)
    print(f"{attack.id}: exit {code}\nstdout: {out}\nstderr: {err}")
    lines = [line for line in err.splitlines() if line.strip()]
    words = lines[-1] if lines else ""
    if attack.args[:2] == ["store", "validate"] and code == 1:  # it lists every problem on a line of its own first
        assert all(line.startswith("problem: ") for line in lines[:-1]), err
        words, lines = err, lines[-1:]
    assert code == attack.code, err
    assert "Traceback" not in out + err
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    else:  # a usage error: click's usage lines, then one "Error:" line
        assert lines[-1].startswith("Error: "), err
    assert attack.message in words, err
    after = _fingerprint(folder)
    if attack.trains:  # rows computed before the failure are kept; the failed one stays pending
        with RunStore(folder / attack.trains) as store:
            now = store.completed_mask()
        assert (now >= trained).all() and now.sum() > trained.sum() and not now.all(), now
        del after[attack.trains]
    for name, print_ in before.items():
        assert after.get(name) == print_, f"{name} was changed or removed"
    assert not set(after) - set(before), f"new files: {set(after) - set(before)}"
    assert all(lock.stat().st_size == 0 for lock in folder.rglob("*.lock")), "a lock file was left holding a name"


def test_matrix_covers_every_reader_and_writer() -> None:
    ids = {a.id for a in ATTACKS}
    assert len(ids) == len(ATTACKS)
    for name in STORE_READERS:
        assert {f"{name}/store-{c.id}" for c in STORE_CORRUPTIONS if not (name == "report" and c.code == 2)} <= ids
    for name in ESTIMATE_READERS:
        assert {f"{name}/estimate-{c.id}" for c in ESTIMATE_CORRUPTIONS} <= ids
    assert sum(a.id.endswith("input-as-output") for a in ATTACKS) == len(WRITERS)
