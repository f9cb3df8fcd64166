"""Text files a user gives (recipes, unit names): bounded in size and decoded as UTF-8, or refused in one line."""

from __future__ import annotations

import os
from pathlib import Path

from dmtoolkit.errors import UserError
from dmtoolkit.paths import check_input_file
from dmtoolkit.resources import format_bytes


def read_text_input(path: str | Path, what: str, *, limit: int, error: type[Exception] = UserError) -> str:
    """A user's text file (a recipe, a list of names) decoded as UTF-8, read only up to `limit` bytes: a file that
    is not a regular file, larger than `limit` or not UTF-8 is refused in one line (`error`) naming the first bad
    byte's line."""
    path = Path(path)
    if os.path.lexists(path):  # a missing file is the caller's to word (e.g. "recipe file not found")
        check_input_file(path, f"the {what}, a text file", allow_empty=True, error=error)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as failure:
        raise error(f"{path}: cannot read the {what} ({failure.strerror or failure})") from None
    if len(raw) > limit:
        raise error(f"{path}: larger than the {format_bytes(limit)} a {what} may be; give the {what} itself")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as failure:
        line = raw[: failure.start].count(b"\n") + 1
        raise error(f"{path}: not UTF-8 text (byte 0x{raw[failure.start]:02x} at line {line}); save the {what} as "
                    "UTF-8") from None
