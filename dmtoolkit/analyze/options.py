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
INTERVAL_LEVEL = 0.9
"""Nominal coverage of the intervals `rank_classes`, `explain_target` and `subpopulation` give every influence."""
DETECT_TOP = 20
"""Pairs `detect_leakage` and candidates `detect_mislabels` list for browsing, beside the flagged ones."""
DETECT_FDR = 0.05
"""False discovery rate at which `detect_leakage` and `detect_mislabels` flag candidates (Benjamini–Hochberg)."""
MIN_EVIDENCE_DOF = 3
"""Below this many degrees of freedom (draws − 1) the detectors warn that BH's FDR is not guaranteed:
simulated with 2 orthogonal blocks, BH at 10% kept 15% false discoveries; with 4 blocks 9%
(tests/test_evidence.py)."""
NEAR_DUPLICATE = 0.985
"""Pixel near-duplicate score (shift-tolerant correlation, `near_duplicate_matrix`) from which a pair counts as a
copy. Chosen on the development store only (example recipe, planting seed 0): its planted copies score
≥ 0.992, its other sources' best match with any target ≤ 0.977; see docs/signal.md."""
COUNTERFACTUAL_KS: tuple[int, ...] = (0, 5, 10)
"""Numbers of classes `counterfactual` removes."""
COUNTERFACTUAL_REPEATS = 3
"""Retrainings per k in `counterfactual`."""
RECOMMEND_VALIDATION_FRACTION = 0.5
"""Share of the target examples `recommend_removal` chooses k on (the rest, the test part, it never reads)."""
RECOMMEND_SPLIT_SEED = 12345
"""Seed of the permutation that splits target examples into validation and test parts (`split_targets`)."""
