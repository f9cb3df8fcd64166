"""What kind of thing a path is, checked before any input file is opened: the one home for that check.

Opening a FIFO for reading blocks until someone writes to it, a device node or a symlink to one reads forever
or nothing, and a zero-byte file reads as "no data". Every input file a command reads (run stores, estimates,
the report's folder, imported arrays, recipes, name lists) goes through `check_input_file` first, so each of
those is one line that names the path and what it is. The output guard (`atomic.check_output`) describes the
paths it refuses with the same `describe_file`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dmtoolkit.errors import UserError


def describe_file(mode: int) -> str:
    """What a file of this st_mode is, for messages ("a named pipe (FIFO)", "a directory", ...)."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


def check_input_file(path: str | Path, what: str, *, missing: str | None = None, allow_empty: bool = False,
                     error: type[Exception] = UserError) -> Path:
    """`path` as a Path if it is a regular file (or a link to one), non-empty unless `allow_empty`; else one line
    (`error`) that names the path, what it is instead and `what` was expected (`missing`: the message for a path
    that does not exist, e.g. one that says how to make the file)."""
    path = Path(path)
    if not os.path.lexists(path):
        raise error(missing or f"{path}: no such file ({what})")
    try:
        st = os.stat(path)
    except OSError:
        raise error(f"{path}: is a dangling symbolic link (to {os.readlink(path)}), not a file ({what})") from None
    if not stat.S_ISREG(st.st_mode):
        link = f"is a symbolic link to {os.path.realpath(path)}, " if os.path.islink(path) else "is "
        raise error(f"{path}: {link}{describe_file(st.st_mode)}, not a regular file ({what})")
    if st.st_size == 0 and not allow_empty:
        raise error(f"{path}: empty file (0 bytes); expected {what}")
    return path
