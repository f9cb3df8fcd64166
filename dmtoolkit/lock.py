"""Single-writer lock for a store: an flock on `STORE.lock` that names its holder.

The kernel drops an flock when its process dies, so a lock file left by a killed writer is stale by
construction and the next writer simply takes it over. The file itself is left in place (empty) on
release: unlinking it would let two writers lock two different inodes.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from dmtoolkit.errors import LockError


def lock_path_for(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


class WriterLock:
    """Exclusive, non-blocking writer lock; use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.store_path = Path(path)
        self.lock_path = lock_path_for(os.path.realpath(path))  # one lock per file, whichever link names it
        self._fd: int | None = None
        self.recovered_stale = False

    def acquire(self) -> "WriterLock":
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockError(
                f"{self.store_path}: another writer holds the store ({holder}); "
                "wait for it to finish or stop it, then retry"
            ) from None
        self.recovered_stale = os.fstat(fd).st_size > 0
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {stamp}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
