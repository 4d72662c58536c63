"""Which process this is under torch.distributed, for rank-0-only I/O."""

from __future__ import annotations

import os

from torch import distributed as dist


def rank() -> int:
    """Return this process's rank: the process group's if one is up, else torchrun's RANK, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Return True on rank 0 (and in every single-process run)."""
    return rank() == 0
