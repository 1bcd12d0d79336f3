"""Where risk computations run: the torch device, chosen at run time, and the memory bound of the
blocks built on it."""

from __future__ import annotations

import torch

#: Default memory bound (bytes) of any intermediate block built on the device (the kernel blocks
#: of the MMD test, the distance blocks of the k-nearest-neighbour search).
DEFAULT_MAX_BYTES = 256 * 2**20


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as given, else cuda when available, else cpu (chosen at run time)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
