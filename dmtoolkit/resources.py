"""Resource checks: options that decide how much memory a command allocates are checked against the memory
there is before anything large is allocated, and refused in one line that says the need, the limit and the
flag to change (a mistyped `--proj-dim 1000000000` must not start a 256 GB allocation)."""

from __future__ import annotations

import os

from dmtoolkit.errors import UserError


class ResourceError(UserError):
    """An option that would need more memory than the machine has."""


def available_memory(device: str | None = None) -> int:
    """Bytes that can be allocated now: free memory of a CUDA device, else the kernel's MemAvailable (physical
    memory when /proc/meminfo is not there)."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def format_bytes(count: float) -> str:
    """1536 -> "1.5 KiB"; 2.5e20 -> "218 EiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024:
            return f"{count:.3g} {unit}"
        count /= 1024
    return f"{count:.3g} EiB"


def require_memory(needed: float, *, what: str, flag: str, device: str | None = None,
                   available: int | None = None) -> None:
    """Refuse (ResourceError) when `needed` bytes exceed the memory available (`available`, default
    `available_memory(device)`): the message names what needs it, both amounts and the `flag` to change."""
    limit = available_memory(device) if available is None else available
    if needed > limit:
        where = "on the GPU" if device is not None and str(device).startswith("cuda") else "available"
        raise ResourceError(f"{what} needs about {format_bytes(needed)} of memory, more than the "
                            f"{format_bytes(limit)} {where}; {flag}")
