"""Array-level statistics: pure functions of NumPy arrays, one home for each (numpy and scipy only; nothing
here reads a store, an estimate file or a recipe, so every layer can use them).

- `ranking`: NaN-aware mean over columns, the order of defined values (ties: lower index first) and 1-based
  positions; the rule `rank_classes`, `removal_ranking` and reliability's rankings share; the largest entries of a
  matrix (`top_pairs`, the pairs `detect_leakage` lists).
- `correlation`: Spearman (per column, of two vectors, over the entries defined in both), Spearman–Brown and
  its inverse (the models a reliability goal needs).
- `lds`: the linear datamodeling score per target, its summary and its bootstrap interval over draws.
- `pvalues`: one-sided p-values from standard errors, Simes, Benjamini–Hochberg.
- `intervals`: the two-sided t (or normal) quantile every interval uses, interval bounds, percentile intervals.
- `splits`: splitting rows by the draws they were sampled in.
- `detection`: z-scores of an influence matrix per target and both ways (leakage's rankings), rank-based AUC.
"""
