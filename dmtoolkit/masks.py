"""Subset masks: mask i keeps exactly round(alpha * P) of P units and is a pure function of (seed, i)."""

from __future__ import annotations

import numpy as np


def subset_size(alpha: float, num_units: int) -> int:
    """Units kept per subset: round(alpha * P), at least 1 and at most P - 1 so both sides exist."""
    return min(max(int(round(alpha * num_units)), 1), num_units - 1)


def mask_for(seed: int, index: int, num_units: int, alpha: float, antithetic: bool = False) -> np.ndarray:
    """Boolean mask of model `index`; with `antithetic`, odd masks complement the even mask before them."""
    base = index - (index % 2) if antithetic else index
    rng = np.random.default_rng([seed, base])
    mask = np.zeros(num_units, dtype=bool)
    mask[rng.permutation(num_units)[: subset_size(alpha, num_units)]] = True
    if antithetic and index % 2:
        mask = ~mask
    return mask


def make_masks(seed: int, num_models: int, num_units: int, alpha: float, antithetic: bool = False) -> np.ndarray:
    """All masks of a run, shape (m, P)."""
    if num_units < 2:
        raise ValueError(f"need at least 2 units to subsample, got {num_units}")
    return np.stack([mask_for(seed, i, num_units, alpha, antithetic) for i in range(num_models)])
