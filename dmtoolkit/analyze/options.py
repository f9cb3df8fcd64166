"""Names the analyses accept, importable without torch or NumPy (the CLI builds its choices from them).

The analyses check their arguments against these same tuples, so a choice added here is offered by the
CLI and accepted by the library at once.
"""

from __future__ import annotations

LEAK_RANKINGS: tuple[str, ...] = ("two-way-z", "target-z", "influence")
"""How `detect_leakage` scores a (source, target) pair: influence standardised within its target column and
its source row (two-way-z), within its target column only (target-z), or raw influence."""

MISLABEL_SCORES: tuple[str, ...] = ("worst", "mean")
"""How `detect_mislabels` scores a source example: its most negative influence on any target, or its mean."""

ORDERS: tuple[str, ...] = ("bottom", "top", "random")
"""Which classes `counterfactual` removes first: most negative, most positive, or a random permutation."""

LEAK_FIGURE_PAIRS = 12
"""Pairs shown in a leakage figure (the table lists all flagged pairs)."""

# Defaults the analyses and the CLI share ------------------------------------------------------------
RANK_TOP = 10
"""Classes `rank_classes` lists each way (most positive, most negative)."""
SUBPOP_SIZE = 16
"""Target examples `subpopulation` returns."""
EXPLAIN_TOP = 5
"""Classes `explain_target` lists each way."""
DETECT_TOP = 20
"""Pairs `detect_leakage` flags and candidates `detect_mislabels` lists (the k of precision@k)."""
COUNTERFACTUAL_KS = "0,5,10"
"""Numbers of classes `counterfactual` removes."""
COUNTERFACTUAL_REPEATS = 3
"""Retrainings per k in `counterfactual`."""
