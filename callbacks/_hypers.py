"""Read and write optimizer hyper-parameters by loopkit name (`mom` is momentum or betas[0])."""

from __future__ import annotations

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
