"""HTML report and plots."""

from dmtoolkit.report.html import build_report

__all__ = ["build_report"]
