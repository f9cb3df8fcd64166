"""Rendering of analysis results: the HTML report (`build_report`), figures (`figures`), terminal text (`text`).

`build_report` is imported on first use, so `dmtoolkit.report.text` stays cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["build_report"]

if TYPE_CHECKING:
    from dmtoolkit.report.html import build_report


def __getattr__(name: str) -> Any:
    if name == "build_report":
        from dmtoolkit.report.html import build_report

        globals()[name] = build_report
        return build_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
