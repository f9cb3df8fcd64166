"""Importing a recipe's `MODULE:FUNCTION` (from the working directory or `PYTHONPATH`) and hashing its source.

Foundation level (no torch), so `create_store` can record the trainer's source hash and the driver can
refuse an unimportable trainer before any worker starts. The contract the function implements is in
`dmtoolkit.train.contract`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from dmtoolkit.errors import TrainerError


def error_line(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = traceback.format_exception_only(type(error), error)[-1].strip()
    return (text.splitlines() or [type(error).__name__])[0]


def _import_path() -> None:
    """Modules are imported from the working directory (as `python -m` does) and `PYTHONPATH`."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def load_function(name: str) -> Callable[..., Any]:
    """The function `MODULE:FUNCTION` names, or a one-line `TrainerError` saying why it cannot be had."""
    module_name, _, attribute = name.partition(":")
    _import_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        hint = "" if error.name and not module_name.startswith(error.name) else \
            "; run from the folder that holds it or add that folder to PYTHONPATH"
        raise TrainerError(f"trainer {name}: cannot import {module_name} ({error_line(error)}){hint}") from None
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # the user's module itself failed while importing (sys.exit too)
        raise TrainerError(f"trainer {name}: importing {module_name} failed ({error_line(error)})") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise TrainerError(f"trainer {name}: module {module_name} has no function {attribute!r}")
    return function


def source_sha256(function: Callable[..., Any]) -> str | None:
    """sha256 of the file that defines `function` (None when there is no source file, e.g. a builtin)."""
    try:
        path = inspect.getsourcefile(function)
    except TypeError:
        return None
    if not path or not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


