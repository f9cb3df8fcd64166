"""Subset masks: a pure function of (seed, i) for model i.

random: mask i keeps exactly round(alpha * P) of P units, drawn uniformly.
orthogonal: masks come in blocks of N models (N the smallest power of two above P); within a block they
are the rows of a Sylvester-Hadamard matrix restricted to P randomly chosen non-constant columns, with
rows shuffled and each unit's sign flipped at random. Every unit is then in exactly half of a block's
models and any two units' columns are orthogonal, so a unit's difference of means carries no linear
effect of any other unit (it equals the least-squares coefficient over a full block). Subset sizes vary
around P/2.
"""

from __future__ import annotations

import numpy as np

ORTHOGONAL_SALT = 0x0A7B


def subset_size(alpha: float, num_units: int) -> int:
    """Units kept per subset: round(alpha * P), at least 1 and at most P - 1 so both sides exist."""
    return min(max(int(round(alpha * num_units)), 1), num_units - 1)


def hadamard_order(num_units: int) -> int:
    """Models per orthogonal block: the smallest power of two with at least P non-constant columns."""
    return 1 << int(num_units).bit_length()


def orthogonal_block_models(num_units: int, antithetic: bool) -> int:
    """Models per orthogonal draw: a Hadamard block of masks, twice that with complements."""
    return hadamard_order(num_units) * (2 if antithetic else 1)


def design_warnings(num_models: int, num_units: int, design: str, antithetic: bool) -> tuple[str, ...]:
    """Why a run of `num_models` models will not give what its mask design promises (empty: nothing to say).

    An orthogonal design's draw is a whole block: units are orthogonal only over a whole block, and
    standard errors (Student's t with G − 1 degrees of freedom over G blocks) and split-half reliability
    need at least two of them.
    """
    if design != "orthogonal":
        return ()
    block = orthogonal_block_models(num_units, antithetic)
    whole, rest = divmod(num_models, block)
    out = []
    if whole < 2:
        out.append(f"{num_models} models make {whole} whole orthogonal block(s) of {block}: standard errors and "
                   f"split-half reliability need at least two; use --models {2 * block} or more, a multiple of "
                   f"{block}")
    elif rest:
        out.append(f"{num_models} models end in a partial orthogonal block ({rest} of {block}), whose units are "
                   f"not orthogonal; use a multiple of {block}, e.g. --models {(whole + 1) * block}")
    return tuple(out)


def _random_mask(seed: int, index: int, num_units: int, alpha: float) -> np.ndarray:
    rng = np.random.default_rng([seed, index])
    mask = np.zeros(num_units, dtype=bool)
    mask[rng.permutation(num_units)[: subset_size(alpha, num_units)]] = True
    return mask


def _orthogonal_mask(seed: int, index: int, num_units: int) -> np.ndarray:
    order = hadamard_order(num_units)
    block, row = divmod(index, order)
    rng = np.random.default_rng([seed, ORTHOGONAL_SALT, block])
    columns = rng.choice(np.arange(1, order), size=num_units, replace=False)
    hadamard_row = rng.permutation(order)[row]
    flips = rng.random(num_units) < 0.5
    parity = (np.bitwise_count(np.bitwise_and(columns, hadamard_row)) % 2).astype(bool)
    return parity ^ flips  # H[r, c] = (-1)^popcount(r & c); unit in the subset where the flipped entry is -1


def mask_for(seed: int, index: int, num_units: int, alpha: float, antithetic: bool = False,
             design: str = "random") -> np.ndarray:
    """Boolean mask of model `index`; with `antithetic`, odd masks complement the even mask before them."""
    base = index // 2 if antithetic else index
    if design == "orthogonal":
        mask = _orthogonal_mask(seed, base, num_units)
    else:
        mask = _random_mask(seed, base * 2 if antithetic else base, num_units, alpha)
    if antithetic and index % 2:
        mask = ~mask
    return mask


def make_masks(seed: int, num_models: int, num_units: int, alpha: float, antithetic: bool = False,
               design: str = "random") -> np.ndarray:
    """All masks of a run, shape (m, P)."""
    if num_units < 2:
        raise ValueError(f"need at least 2 units to subsample, got {num_units}")
    if design not in ("random", "orthogonal"):
        raise ValueError(f"unknown mask design {design!r}; use 'random' or 'orthogonal'")
    return np.stack([mask_for(seed, i, num_units, alpha, antithetic, design) for i in range(num_models)])
