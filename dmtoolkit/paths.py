"""What kind of thing a path is, checked before any file is opened.

Opening a FIFO for reading blocks until someone writes to it, and a device node or a symlink to one reads
forever or nothing; a zero-byte file reads as "no data". Every input file a command reads goes through
`check_input_file` first, so each of those is one line that names the path and what it is.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dmtoolkit.errors import UserError

_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def file_kind(path: str | Path) -> str | None:
    """None for a regular file (or a symlink to one) or a missing path, else what it is, in words."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a broken symlink to {os.readlink(path)}"
        return None
    if stat.S_ISREG(mode):
        return None
    what = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    if os.path.islink(path):
        what = f"a symlink to {os.path.realpath(path)}, {what}"
    return what


def check_input_file(path: str | Path, what: str, hint: str, *, error: type[UserError] = UserError) -> Path:
    """`path` as a Path if it is a regular, non-empty file; else one-line `error` naming what it is and `hint`."""
    path = Path(path)
    if not os.path.lexists(path):
        raise error(f"{path}: no such {what}; {hint}")
    kind = file_kind(path)
    if kind is not None:
        raise error(f"{path}: not a regular file ({kind}); give the {what} itself ({hint})")
    if os.stat(path).st_size == 0:
        raise error(f"{path}: empty file (0 bytes), not a {what}; {hint}")
    return path
