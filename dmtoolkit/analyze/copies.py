"""Pixel copies: the near-duplicate score of two images and the exhaustive scan of source images against target
test images (`find_copies`), the pixel evidence `detect_leakage` reports without any model.

Pure functions of image arrays (uint8, (n, H, W, C)); nothing here reads a store or an estimate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SHIFT = 1
"""Pixels a source image may be shifted by (each way) when compared: a near copy may be moved by one pixel."""


def _grey(images: np.ndarray, size: tuple[int, int] | None) -> torch.Tensor:
    """uint8 (n, H, W, C) -> float (n, h, w) grey in [0, 1], resized (bilinear, antialiased) to `size`."""
    x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float().div_(255.0).mean(1, keepdim=True)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[:, 0]


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(len(x), -1).double()
    x = x - x.mean(1, keepdim=True)
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, x / torch.where(norm > 0, norm, 1), 0.0)


def _shifted(x: torch.Tensor, shift: int) -> list[torch.Tensor]:
    """Every copy of the images moved by up to `shift` pixels each way (zero fill), no shift first."""
    padded = F.pad(x, (shift, shift, shift, shift))
    h, w = x.shape[-2:]
    offsets = sorted(((dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)),
                     key=lambda o: (o != (0, 0), o))
    return [padded[:, shift + dy: shift + dy + h, shift + dx: shift + dx + w] for dy, dx in offsets]


def near_duplicate_matrix(source: np.ndarray, target: np.ndarray, *, shift: int = SHIFT) -> np.ndarray:
    """Pixel near-duplicate score of every (source, target) pair, (n_source, n_target) in [-1, 1].

    Pearson correlation of the grey images at the source resolution (targets resized to it), maximised
    over shifts of the source image by up to `shift` pixels: 1 means identical up to brightness and
    contrast (a copy, or a copy moved by a pixel); a constant image scores 0.
    """
    src = _grey(source, None)
    tgt = _unit_rows(_grey(target, tuple(src.shape[-2:])))
    best = None
    for moved in _shifted(src, shift):
        scores = _unit_rows(moved) @ tgt.T
        best = scores if best is None else torch.maximum(best, scores)
    return best.numpy() if best is not None else np.zeros((len(source), len(target)))


def near_duplicate_scores(a: np.ndarray, b: np.ndarray, *, shift: int = SHIFT) -> np.ndarray:
    """`near_duplicate_matrix` of each pair (a[i], b[i]) only."""
    if len(a) == 0:
        return np.zeros(0)
    return np.array([near_duplicate_matrix(a[i: i + 1], b[i: i + 1], shift=shift)[0, 0] for i in range(len(a))])


SCAN_BLOCK = 1 << 22
"""Floats per block of the copy scan (each operand and each score block at most about this many)."""

SCAN_SLACK = 1e-4
"""The float32 scan keeps pairs within this of the threshold; each is then rescored exactly (float64)."""


@dataclass(frozen=True)
class CopyScan:
    """Every (source, target) pair of an exhaustive copy scan: pixel score ≥ the threshold, or byte-identical.

    source / target: indices into the scanned arrays; score: `near_duplicate_matrix` of the pair (exact, float64,
    for identical pairs and near the threshold; to float32 precision, about 1e-6, elsewhere);
    exact: the two images are identical (same shape, max abs pixel difference 0). Exact pairs first (by source,
    then target index), then near pairs by score (highest first), then by source and target index.
    """

    source: np.ndarray
    target: np.ndarray
    score: np.ndarray
    exact: np.ndarray

    def __len__(self) -> int:
        return len(self.source)


def _canonical(image: np.ndarray) -> np.ndarray:
    """An H×W×C image with its colour channels folded to one when they are all equal: a grey image stored as RGB
    (as a folder read as 3 channels keeps it) is the same picture as the grey original."""
    if image.ndim == 3 and image.shape[-1] > 1 and (image == image[..., :1]).all():
        return image[..., :1]
    return image


def _digest(image: np.ndarray) -> bytes:
    image = np.ascontiguousarray(_canonical(image))
    return hashlib.sha256(repr(image.shape).encode() + image.tobytes()).digest()


def _exact_pairs(source: np.ndarray, target: np.ndarray) -> set[tuple[int, int]]:
    """(source, target) index pairs whose images are identical pixel for pixel (after folding equal colour
    channels, `_canonical`), by hashing every image once."""
    if source.shape[1:3] != target.shape[1:3]:
        return set()
    by_bytes: dict[bytes, list[int]] = {}
    for j in range(len(target)):
        by_bytes.setdefault(_digest(target[j]), []).append(j)
    pairs = set()
    for i in range(len(source)):
        for j in by_bytes.get(_digest(source[i]), ()):
            if np.array_equal(_canonical(source[i]), _canonical(target[j])):
                pairs.add((i, j))
    return pairs


def find_copies(source: np.ndarray, target: np.ndarray, *, threshold: float, shift: int = SHIFT,
                block: int = SCAN_BLOCK) -> CopyScan:
    """Every source image that copies a target image: pixel score ≥ `threshold` or identical pixels.

    Exhaustive (every source against every target) and blocked: the grey images, normalised to zero mean and
    unit norm, become matrices whose products are the correlations; a source block is shifted by up to `shift`
    pixels (as `near_duplicate_matrix`), each shift multiplied by each target block in float32 (at most about
    `block` floats per operand and per score block; the normalised targets are kept between source blocks
    when they take at most 16 blocks, else recomputed), the best shift kept. Pairs within SCAN_SLACK of the
    threshold are rescored in float64 by `near_duplicate_matrix` itself, so whether a pair is kept does not
    depend on float32 rounding. Byte-identical pairs are found by hashing and kept whatever their score (a
    constant image scores 0 but is still a copy).
    """
    source, target = np.asarray(source), np.asarray(target)
    rows, cols, scores = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    if len(source) and len(target):
        size = tuple(_grey(source[:1], None).shape[-2:])
        pixels = size[0] * size[1]
        per_target = max(1, min(len(target), block // pixels))
        per_source = max(1, min(len(source), block // max(pixels, per_target)))
        starts = range(0, len(target), per_target)
        prepare = lambda t: _unit_rows(_grey(target[t: t + per_target], size)).float()  # noqa: E731
        kept = [prepare(t) for t in starts] if len(target) * pixels <= 16 * block else None  # else: per source block
        for s in range(0, len(source), per_source):
            moved = [_unit_rows(m).float() for m in _shifted(_grey(source[s: s + per_source], None), shift)]
            offset = 0
            for tgt in kept if kept is not None else map(prepare, starts):
                best = moved[0] @ tgt.T
                for m in moved[1:]:
                    torch.maximum(best, m @ tgt.T, out=best)
                i, j = torch.nonzero(best >= threshold - SCAN_SLACK, as_tuple=True)
                rows.append(i.numpy() + s)
                cols.append(j.numpy() + offset)
                scores.append(best[i, j].double().numpy())
                offset += len(tgt)
    i, j, score = (np.concatenate(x) for x in (rows, cols, scores))
    exact_pairs = _exact_pairs(source, target)
    missing = sorted(exact_pairs - set(zip(i.tolist(), j.tolist())))
    if missing:
        extra_i, extra_j = (np.array(x, np.int64) for x in zip(*missing))
        i, j = np.concatenate([i, extra_i]), np.concatenate([j, extra_j])
        score = np.concatenate([score, np.full(len(missing), np.nan)])
    exact = np.array([(a, b) in exact_pairs for a, b in zip(i.tolist(), j.tolist())], bool)
    band = exact | ~(score >= threshold + SCAN_SLACK)  # exact, near the threshold or not scored: rescore in float64
    if band.any():
        score[band] = near_duplicate_scores(source[i[band]], target[j[band]], shift=shift)
    score = np.clip(score, -1.0, 1.0)  # rounding can put a copy's correlation a hair above 1
    keep = exact | (score >= threshold)
    i, j, score, exact = i[keep], j[keep], score[keep], exact[keep]
    order = np.lexsort((j, i, np.where(exact, 0.0, -score), ~exact))
    return CopyScan(i[order], j[order], score[order], exact[order])
