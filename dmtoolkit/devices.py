"""Device choice shared by every compute step: `cpu`, `cuda`, or None for cuda-if-available."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from dmtoolkit.errors import UserError


def resolve_device(name: str | None) -> torch.device:
    """The torch device to use; asking for CUDA on a machine without a GPU is a user error."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"unknown device {name!r}; use cpu or cuda")
    return torch.device(name)


TRAINING_THREADS = 1
"""Torch intra-op threads every store row is trained with (the serial executor, each worker process, and Ray
workers by default): multithreaded reductions sum in another order, and long training grows those float
differences into different networks, so anything that retrains a stored row must use the same setting."""


@contextmanager
def training_threads(threads: int = TRAINING_THREADS) -> Iterator[None]:
    """Run the block with torch at `threads` intra-op threads (the driver's setting), restoring the caller's after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
