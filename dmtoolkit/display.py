"""How a result shows itself in a notebook: `print(result)` gives the CLI's text, `result` a one-line repr,
Jupyter an HTML table (`_repr_html_`), and `result.to_frame()` a pandas DataFrame.

Result types (analyze/results.py, estimate/lds.py, analyze/reliability.py) inherit `Displayable`, are declared
`@dataclass(frozen=True, repr=False)` (so the dataclass does not replace the short repr), and say what their
table is in `_table()`: column names and one tuple per row. Everything else is here, once.

The text is exactly what the CLI prints: `dmtoolkit.report.text` owns the formatters and registers them by
the result type's dotted name (`register_text`). Results sit below the report layer and may not import it
(tests/test_layers.py), so the first `str()` of a result loads that module by name, as the package facade
loads its names; nothing else here knows the report layer. No NumPy, no pandas at import (pandas is the
optional `notebook` extra, imported by `to_frame` only).
"""

from __future__ import annotations

import html
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dmtoolkit.errors import UserError

TEXT_MODULE = "dmtoolkit.report.text"
"""The module that registers the CLI's formatters (imported by name on first use, see the module docstring)."""
HTML_ROWS = 20
"""Rows of the notebook table; the rest are counted below it (`to_frame()` has them all)."""
REPR_WIDTH = 100

_TEXT: dict[str, Callable[[Any], str]] = {}


class MissingExtra(UserError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def type_name(cls: type) -> str:
    """`dmtoolkit.estimate.lds.LdsResult`: the key formatters are registered under."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_text(formatters: Mapping[str, Callable[[Any], str]]) -> None:
    """Register the CLI's text formatter of each result type (by dotted type name)."""
    _TEXT.update(formatters)


def text_of(result: Any) -> str:
    """What the CLI prints for `result` (the formatter registered for its type or a base type)."""
    importlib.import_module(TEXT_MODULE)  # registers the formatters (a dictionary lookup once imported)
    for cls in type(result).__mro__:
        formatter = _TEXT.get(type_name(cls))
        if formatter is not None:
            return formatter(result)
    raise TypeError(f"no text formatter is registered for {type_name(type(result))} (see {TEXT_MODULE})")


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


class Displayable:
    """Mixin: `__str__` (the CLI's text), a short `__repr__`, `_repr_html_`, `to_frame()`; see the module."""

    def _table(self) -> tuple[Sequence[str], list[tuple[Any, ...]]]:
        """(column names, rows): the result's main table, one tuple of plain values per row."""
        raise NotImplementedError

    def __str__(self) -> str:
        return text_of(self)

    def __repr__(self) -> str:
        name = type(self).__name__
        try:
            first = next(iter(text_of(self).splitlines()), "")
            rows = len(self._table()[1])
        except Exception:  # a repr never raises: fall back to the type's name  # noqa: BLE001
            return f"<{name}>"
        if len(first) > REPR_WIDTH:
            first = first[:REPR_WIDTH - 1] + "…"
        return f"<{name}: {first}; {rows} rows: print() for the text, .to_frame() for the table>"

    def _repr_html_(self) -> str:
        columns, rows = self._table()
        lines = text_of(self).splitlines()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                       for row in rows[:HTML_ROWS])
        more = (f"<p>… and {len(rows) - HTML_ROWS} more rows (<code>.to_frame()</code> has them all)</p>"
                if len(rows) > HTML_ROWS else "")
        text = html.escape("\n".join(lines))
        return (f"<div><p><b>{html.escape(type(self).__name__)}</b>: {html.escape(lines[0] if lines else '')}</p>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"
                f"<details><summary>as the CLI prints it</summary><pre>{text}</pre></details></div>")

    def to_frame(self) -> Any:
        """The result's table as a pandas DataFrame (pandas: `pip install 'dmtoolkit[notebook]'`)."""
        try:
            import pandas as pd
        except ImportError:
            raise MissingExtra("to_frame() needs pandas: pip install 'dmtoolkit[notebook]'") from None
        columns, rows = self._table()
        return pd.DataFrame(list(rows), columns=list(columns))


def rows_of(entries: Sequence[Any], columns: Sequence[str], **extra: Any) -> list[tuple[Any, ...]]:
    """One row per entry from its `to_json()` (the columns named), after the `extra` constant columns."""
    rows = []
    for entry in entries:
        data = entry.to_json()
        rows.append(tuple(extra.values()) + tuple(data[c] for c in columns))
    return rows


def count_up(value: float) -> str:
    """A number of models (or other whole things) needed, rounded up and grouped: 7627.4 -> "7,628"."""
    return f"{int(-(-value // 1)):,}"
