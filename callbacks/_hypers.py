"""Read and write optimizer hyper-parameters by loopkit name (`mom` is momentum or betas[0])."""

from __future__ import annotations

import math
import numbers
from typing import Any


def hyper_keys(group: dict[str, Any]) -> list[tuple[str, str, int | None]]:
    """Return `(name, key, index)` for each numeric hyper-parameter of a param group.

    `mom` reads `momentum`, or `betas` at index 0 for Adam-like optimizers;
    `lr` comes first, then `mom`, then the rest by name.
    """
    keys: list[tuple[str, str, int | None]] = []
    for key, value in group.items():
        if key == "betas":
            keys.append(("mom", key, 0))
        elif key == "momentum":
            keys.append(("mom", key, None))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            keys.append((key, key, None))
    return sorted(keys, key=lambda k: (k[0] != "lr", k[0] != "mom", k[0]))


def set_hyper(group: dict[str, Any], name: str, value: float) -> None:
    """Set hyper-parameter `name` of a param group (for `mom`, keep the second beta)."""
    if name == "mom" and "betas" in group:
        group["betas"] = (value, *group["betas"][1:])
    elif name == "mom":
        group["momentum"] = value
    else:
        group[name] = value


def resolve_path(root: Any, path: str, who: str) -> tuple[Any, str]:
    """Return `(owner, attr)` for a dotted `path` from `root` ("model.drop.p"); raise unless it names a number."""
    *parents, attr = path.split(".")
    owner, walked = root, "learn"
    for part in parents:
        if not hasattr(owner, part):
            raise ValueError(f"{who}: {path!r} does not resolve: {walked} has no attribute {part!r}; check the path.")
        owner, walked = getattr(owner, part), f"{walked}.{part}"
    value = getattr(owner, attr, None)
    if not hasattr(owner, attr):
        raise ValueError(f"{who}: {path!r} does not resolve: {walked} has no attribute {attr!r}; check the path.")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{who}: {path!r} is {value!r} ({type(value).__name__}), not a number; schedule a numeric attribute, "
            "such as a dropout's p (model.drop.p)."
        )
    return owner, attr


def check_number(func: str, name: str, value: Any) -> float:
    """Return `value` if it is a finite real number; raise naming `func` and `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{func}: {name} must be a number, got {value!r}; pass a float such as 0.1.")
    if not math.isfinite(value):
        raise ValueError(f"{func}: {name} must be finite, got {value!r}.")
    return value  # type: ignore[return-value]  # a Real: int, float or numpy scalar
