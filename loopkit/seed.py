"""`set_seed`: one call seeds every RNG a training run draws from."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python's `random`, NumPy's global RNG and torch's (CPU and every CUDA device).

    The same seed then gives the same run: initial weights, shuffling, dropout and
    augmentation draws. With `deterministic=True` torch also uses deterministic
    algorithms only (`torch.use_deterministic_algorithms(True)`, cuDNN
    deterministic and not benchmarking, and cuBLAS's workspace setting), which
    makes GPU runs repeat exactly at some cost in speed; an operation with no
    deterministic version then raises. `deterministic=False` leaves those settings
    as they are. Loaders with their own `torch.Generator` (as
    `DataLoaders.from_tensors(..., seed=...)` makes) are seeded by their own seed.
    Raises `TypeError` unless `seed` is an int.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"set_seed: seed must be an int, got {seed!r}.")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy takes seeds in [0, 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device, lazily
    if deterministic:
        # cuBLAS needs this before its first call to be deterministic (CUDA >= 10.2).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
