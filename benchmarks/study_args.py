"""What the studies share on their command line: a comma-separated choice of named settings or levers.

    names = chosen(args.settings, SETTINGS, "settings")   # benchmarks/ is on sys.path when a study runs
"""

from __future__ import annotations

from collections.abc import Iterable


def chosen(text: str, registry: Iterable[str], what: str) -> list[str]:
    """The names in `text` ("a,b", empty parts skipped), each one of `registry`; otherwise exit with one line
    naming the unknown ones and every choice."""
    choices = list(registry)
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in choices]
    if unknown:
        raise SystemExit(f"unknown {what} {unknown}; choose from {', '.join(choices)}")
    return names
