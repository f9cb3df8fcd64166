"""Device choice shared by every compute step: `cpu`, `cuda`, or None for cuda-if-available."""

from __future__ import annotations

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
