"""What the studies share: a comma-separated choice of named settings or levers, and the results file that
every invocation adds to.

    names = chosen(args.settings, SETTINGS, "settings")   # benchmarks/ is on sys.path when a study runs
    results = saved_results(args.out / "study.json")       # then results[name] = ...; write it back
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def chosen(text: str, registry: Iterable[str], what: str) -> list[str]:
    """The names in `text` ("a,b", empty parts skipped), each one of `registry`; otherwise exit with one line
    naming the unknown ones and every choice."""
    choices = list(registry)
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in choices]
    if unknown:
        raise SystemExit(f"unknown {what} {unknown}; choose from {', '.join(choices)}")
    return names


def saved_results(path: Path) -> dict[str, Any]:
    """The results an earlier invocation wrote to `path` (JSON), or {} when there are none yet."""
    return json.loads(path.read_text()) if path.exists() else {}
