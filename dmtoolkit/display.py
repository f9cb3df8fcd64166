"""How a result shows itself in a notebook: `print(result)` gives the CLI's text, `result` a one-line repr,
Jupyter an HTML table (`_repr_html_`), and `result.to_frame()` a pandas DataFrame.

Result types (analyze/results.py, estimate/lds.py, analyze/reliability.py, store_checks.py) inherit `Displayable`,
are declared `@dataclass(frozen=True, repr=False)` (so the dataclass does not replace the short repr), and say what
their table is in `_table()`: column names and one tuple per row. Everything else is here, once.

Their `to_json()` (what `--json` prints and report.json holds) is `JsonResult`'s, also here once: every field in
declaration order under its own name, converted to plain JSON values (`plain`), then the type's `json_derived`
properties (`json_order` puts named keys first). A field says otherwise in its metadata (`json_field`): another
key (`class_name` -> "class"), no key (images), no key when its value is None or empty, or a conversion of its own.

The text is exactly what the CLI prints: `dmtoolkit.report.text` owns the formatters and registers them by
the result type's dotted name (`register_text`). Results sit below the report layer and may not import it
(tests/test_layers.py), so the first `str()` of a result loads that module by name, as the package facade
loads its names; nothing else here knows the report layer. No NumPy, no pandas at import (pandas is the
optional `notebook` extra, imported by `to_frame` only).
"""

from __future__ import annotations

import dataclasses
import html
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePath
from typing import Any, ClassVar

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


JSON_KEY = "json_key"
"""Field metadata: the JSON key the field is written under (None: the field is not in the JSON)."""
JSON_OMIT = "json_omit"
"""Field metadata: "none" leaves the key out when the value is None, "empty" when it is None or empty."""
JSON_CONVERT = "json_convert"
"""Field metadata: a function applied to the value before `plain` (e.g. a pair to a dict with named keys)."""


def json_field(key: Any = dataclasses.MISSING, *, omit: str | None = None,
               convert: Callable[[Any], Any] | None = None, **kwargs: Any) -> Any:
    """A dataclass field that says how `JsonResult.to_json` writes it: under `key` (default: its name; None: not
    at all), left out when its value is None (`omit="none"`) or empty (`omit="empty"`), through `convert`.
    Other keyword arguments (`default`, `compare`, ...) go to `dataclasses.field`."""
    if omit not in (None, "none", "empty"):
        raise ValueError(f"omit must be None, 'none' or 'empty', not {omit!r}")
    metadata: dict[str, Any] = {} if key is dataclasses.MISSING else {JSON_KEY: key}
    if omit is not None:
        metadata[JSON_OMIT] = omit
    if convert is not None:
        metadata[JSON_CONVERT] = convert
    return dataclasses.field(metadata=metadata, **kwargs)


def not_in_json(**kwargs: Any) -> Any:
    """A field left out of the JSON, of equality and of the repr (arrays such as images for figures)."""
    return dataclasses.field(default=None, compare=False, repr=False, metadata={JSON_KEY: None}, **kwargs)


def plain(value: Any) -> Any:
    """`value` as plain JSON values: a result by its `to_json()` (a dataclass without one by `JsonResult`'s
    rule), tuples and lists as lists, mappings as dicts with string keys, NumPy scalars and arrays as Python
    numbers and lists, paths as strings; None, str, int, float and bool as they are."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return result_json(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "tolist"):  # NumPy scalars and arrays (np.float64 is a float, np.int64 is not an int)
        return value.tolist()
    for kind in (bool, str, int, float):  # other subclasses (np.str_, an IntEnum): the plain value
        if isinstance(value, kind):
            return kind(value)
    raise TypeError(f"{type(value).__name__} has no JSON form")


def result_json(result: Any) -> dict[str, Any]:
    """The JSON of a dataclass result: each field (see `json_field`) in declaration order, then the properties its
    type names in `json_derived` (a name, or a (key, attribute) pair); the keys its type names in `json_order`
    first, in that order (the order the JSON has always had)."""
    data: dict[str, Any] = {}
    keys = []
    for f in dataclasses.fields(result):
        key = f.metadata.get(JSON_KEY, f.name)
        if key is None:
            continue
        keys.append(key)
        value = getattr(result, f.name)
        omit = f.metadata.get(JSON_OMIT)
        if (value is None and omit) or (omit == "empty" and not value):
            continue
        convert = f.metadata.get(JSON_CONVERT)
        data[key] = plain(value if convert is None else convert(value))
    for entry in getattr(type(result), "json_derived", ()):
        key, attr = (entry, entry) if isinstance(entry, str) else entry
        keys.append(key)
        data[key] = plain(getattr(result, attr))
    order = getattr(type(result), "json_order", ())
    unknown = set(order) - set(keys)
    if unknown:
        raise TypeError(f"{type(result).__name__}.json_order names no field or derived key: {sorted(unknown)}")
    first = {key: data[key] for key in order if key in data}
    return {**first, **{key: value for key, value in data.items() if key not in first}}


class JsonResult:
    """Mixin for frozen dataclass results: `to_json()` by `result_json` (fields, then `json_derived`)."""

    json_derived: ClassVar[tuple[str | tuple[str, str], ...]] = ()
    """Properties (or class attributes) added after the fields: a name, or (JSON key, attribute name)."""
    json_order: ClassVar[tuple[str, ...]] = ()
    """Keys written first, in this order (the rest follow: fields, then derived): where the order the JSON has
    always had differs from the fields' (report.json is written unsorted; docs/python-api.md shows one)."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values: what `--json` prints and report.json holds."""
        return result_json(self)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


class Displayable(JsonResult):
    """Mixin: `__str__` (the CLI's text), a short `__repr__`, `_repr_html_`, `to_frame()`, `to_json()`; see the
    module."""

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
