"""The one way result files are written, and the one guard every writing command passes its output through.

`check_output(out, force=..., inputs=...)` (called before long work, and again by `replacing` when writing):

* the output is absent or a regular file (a symbolic link to a regular file is followed and the file it
  names is replaced; a FIFO, device node, socket, directory, or a link to one of those, or a dangling link,
  is refused in one line that names the path and what it is);
* it is none of the command's inputs (same resolved path, or the same file under another name: equal
  `(st_dev, st_ino)`, so hard links are caught too);
* an existing output needs `force` (the message `already_exists` is the only place its text lives);
* with `force`, it is replaced only if no writer holds its lock (`dmtoolkit.lock.WriterLock`, the lock
  `train` holds): `replacing` holds that lock from the start of the write until the rename.

`replacing(out, ...)` yields a temporary path beside the output, named `.NAME.dmtoolkit-tmp.HOST.PID.SUFFIX`,
and renames it into place when the block succeeds (without `force`, with a no-clobber link, so an output that
appeared meanwhile is not overwritten either). A crash or Ctrl-C leaves the old file or the new one, never half
of one. A kill -9 leaves the temporary: the next `replacing` on the same path removes it (`remove_stale_temps`)
when its process no longer runs on this host, or when it has not been modified for `STALE_AFTER_SECONDS`
(temporaries of other hosts on a shared file system, whose process cannot be checked from here).
"""

from __future__ import annotations

import os
import re
import socket
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import h5py

from dmtoolkit.errors import LockError, OutputError
from dmtoolkit.lock import WriterLock, lock_path_for
from dmtoolkit.paths import describe_file

__all__ = ["STALE_AFTER_SECONDS", "TEMP_MARK", "already_exists", "check_output",
           "remove_stale_temps", "replacing", "temp_path_for", "write_atomic", "write_bytes_atomic",
           "write_text_atomic"]

TEMP_MARK = "dmtoolkit-tmp"
STALE_AFTER_SECONDS = 24 * 3600  # a temporary untouched for a day is stale whatever host wrote it
PathLike = str | Path


def already_exists(out: PathLike) -> str:
    """The message for an existing output written without --force (its one home)."""
    return f"{out}: already exists; pass --force to overwrite it, or choose another -o path"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _identity(path: Path) -> tuple[Path, tuple[int, int] | None]:
    """Resolved path and (st_dev, st_ino) of the file it names (None when it does not exist)."""
    try:
        st = os.stat(path)
        inode = (st.st_dev, st.st_ino)
    except OSError:
        inode = None
    return Path(os.path.realpath(path)), inode


def _target(out: Path) -> Path:
    """The file to write for `out`: `out` itself, or the regular file a symbolic link names; refuses anything
    that is not absent or a regular file, in one line naming the path and what it is."""
    try:
        lst = os.lstat(out)
    except FileNotFoundError:
        lst = None
    except OSError as error:  # e.g. a path through a regular file ("Not a directory")
        raise OutputError(f"{out}: cannot be written ({error.strerror}); choose another -o path") from None
    if lst is None:
        parent = out.parent
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{out}: its folder {parent} is {describe_file(os.stat(parent).st_mode)}, "
                              "not a folder; choose another -o path")
        return out
    if stat.S_ISLNK(lst.st_mode):
        real = Path(os.path.realpath(out))
        try:
            st = os.stat(out)
        except OSError:
            raise OutputError(f"{out}: is a dangling symbolic link (to {os.readlink(out)}); "
                              "remove it or choose another -o path") from None
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{out}: is a symbolic link to {real}, {describe_file(st.st_mode)}, not a regular "
                              "file; refusing to write there, choose another -o path")
        return real
    if not stat.S_ISREG(lst.st_mode):
        raise OutputError(f"{out}: is {describe_file(lst.st_mode)}, not a regular file; refusing to write there, "
                          "choose another -o path")
    return out


def _check_not_input(out: Path, target: Path, inputs: Iterable[PathLike | None]) -> None:
    out_real, out_inode = _identity(target)
    for given in inputs:
        if given is None:
            continue
        real, inode = _identity(Path(given))
        if real == out_real:
            raise OutputError(f"{out}: is also an input of this command ({given}); writing it would destroy the "
                              "input, choose another -o path")
        if inode is not None and inode == out_inode:
            raise OutputError(f"{out}: is the same file as the input {given} (a link to it); writing it would "
                              "destroy the input, choose another -o path")


def _lock_probe(target: Path) -> None:
    with _output_lock(target):
        pass


@contextmanager
def _output_lock(target: Path) -> Iterator[None]:
    """Hold `WriterLock(target)` (the lock a training run holds); a lock file made only for this is removed
    again while still held, so the output's folder keeps no stray `.lock` beside estimates and pages.

    (Removing it while held means a process that opened it just before and locks it just after, racing a third
    process that creates a new one, could see two lock files: a window of microseconds between three
    processes, accepted for outputs no training run was using.)"""
    lock = WriterLock(target)
    existed = lock.lock_path.exists()
    try:
        lock.acquire()
    except LockError as error:
        if target.suffix == ".h5":  # a run store a training run holds: the lock's own words say so
            raise
        holder = str(error).partition("(")[2].rpartition(")")[0] or "another process"
        raise OutputError(f"{target}: another dmtoolkit process is writing it ({holder}); wait for it to finish "
                          "or stop it, then retry") from None
    try:
        yield
    finally:
        if not existed:
            lock.lock_path.unlink(missing_ok=True)
        lock.release()


def check_output(out: PathLike, *, force: bool, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Raise `OutputError` (one line) unless `out` may be written; return the file to write (`out`, or the
    regular file a symbolic link `out` names). See the module docstring for the rules."""
    out = Path(out)
    target = _target(out)
    _check_not_input(out, target, inputs)
    folder = next((p for p in (target.parent, *target.parent.parents) if p.exists()), None)
    if folder is not None and not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: the folder {folder} is not writable; choose another -o path")
    if target.exists():
        if not force:
            raise OutputError(already_exists(out))
        _lock_probe(target)  # a training run holds it: fail now, before any long work
    return target


def temp_path_for(target: Path, suffix: str = ".tmp") -> Path:
    """The temporary beside `target` this process writes: `.NAME.dmtoolkit-tmp.HOST.PID.SUFFIX`."""
    return target.with_name(f".{target.name}.{TEMP_MARK}.{_host()}.{os.getpid()}{suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(target: PathLike, *, now: float | None = None) -> list[Path]:
    """Remove the temporaries left beside `target` by killed writers; returns what was removed.

    A temporary `.NAME.dmtoolkit-tmp.HOST.PID.SUFFIX` is stale when HOST is this host and PID no longer runs,
    or (any host) when it was last modified more than `STALE_AFTER_SECONDS` ago. Temporaries of earlier
    versions (`.NAME.PID.tmp`, `.NAME.PID.tmp.npz`, `.NAME.PID.merge.h5`) name no host, so only the age rule
    removes them (their PID may be a live process on another host sharing the folder).
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    now = time.time() if now is None else now
    pattern = re.compile(re.escape(f".{target.name}.") + r"(?:" + re.escape(TEMP_MARK)
                         + r"\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\..+|(?P<old>\d+)\.(?:tmp|tmp\.npz|merge\.h5))")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = pattern.fullmatch(name)
        if not match:
            continue
        path = folder / name
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        host, pid = match["host"], int(match["pid"] or match["old"])
        if pid == os.getpid() and host == _host():
            continue
        dead = host == _host() and not _alive(pid)  # host None (an old name): never judged by its PID
        if dead or now - st.st_mtime > STALE_AFTER_SECONDS:
            path.unlink(missing_ok=True)
            lock_path_for(path).unlink(missing_ok=True)  # a temporary run store may have had its lock file
            removed.append(path)
    return removed


@contextmanager
def replacing(out_path: PathLike, *, force: bool, inputs: Iterable[PathLike | None] = (), fsync: bool = False,
              suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `out_path`; when the block succeeds it is moved to `out_path`.

    `check_output` decides first; an existing output (with `force`) stays locked (`WriterLock`) from here to
    the rename. `fsync` makes the new file durable before the rename (run stores: rows are trusted after a
    crash). The temporary file is removed whatever happens; `suffix` keeps writers that insist on an
    extension happy.
    """
    out = Path(out_path)
    inputs = tuple(inputs)
    target = check_output(out, force=force, inputs=inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = temp_path_for(target, suffix)
    with ExitStack() as held:
        locked = target.exists()  # with force (check_output refused otherwise): locked until the rename
        try:
            if locked:
                held.enter_context(_output_lock(target))
            yield tmp
            if fsync:
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
            _commit(tmp, out, force=force, inputs=inputs, locked=locked, held=held)
            if fsync:
                _fsync_folder(target.parent)
        finally:
            tmp.unlink(missing_ok=True)


def _commit(tmp: Path, out: Path, *, force: bool, inputs: tuple, locked: bool, held: ExitStack) -> None:
    """Move the finished temporary to the output, re-checking what may have changed during the write."""
    if not force:
        target = check_output(out, force=False, inputs=inputs)
        try:
            os.link(tmp, target)  # no-clobber: an output that appeared meanwhile is kept
        except FileExistsError:
            raise OutputError(already_exists(out)) from None
        except OSError:  # a file system without hard links
            if target.exists():
                raise OutputError(already_exists(out)) from None
            os.replace(tmp, target)
        return
    target = _target(out)
    _check_not_input(out, target, inputs)
    if not locked and target.exists():  # appeared during the write
        held.enter_context(_output_lock(target))
    os.replace(tmp, target)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(out_path: PathLike, fill: Callable[[h5py.File], None], *, force: bool,
                 inputs: Iterable[PathLike | None] = ()) -> Path:
    """Create the HDF5 file `out_path` via `fill` in a temporary file renamed into place."""
    with replacing(out_path, force=force, inputs=inputs) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            fill(f)
    return Path(out_path)


def write_bytes_atomic(out_path: PathLike, data: bytes, *, force: bool, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Write `data` to `out_path` through `replacing` (figures, pages, CSV)."""
    with replacing(out_path, force=force, inputs=inputs) as tmp:
        tmp.write_bytes(data)
    return Path(out_path)


def write_text_atomic(out_path: PathLike, text: str, *, force: bool, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Write UTF-8 `text` to `out_path` through `replacing`."""
    return write_bytes_atomic(out_path, text.encode("utf-8"), force=force, inputs=inputs)
