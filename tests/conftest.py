"""Shared fixtures: a tiny model, synthetic data with chosen batch sizes, an event tracer.

Hypothesis profiles: `quick` (default, for local runs) and `ci` (more examples);
choose with `pytest --hypothesis-profile=ci`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, settings
from torch import nn

from loopkit import EVENTS, Callback, Learner

matplotlib.use("Agg")

settings.register_profile(
    "quick", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("quick")

N_FEATURES, N_CLASSES = 4, 3


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `n` random samples of a small classification problem."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=gen)
    y = torch.randint(0, N_CLASSES, (n,), generator=gen)
    return x, y


def batches_of(x: torch.Tensor, y: torch.Tensor, sizes: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split `(x, y)` into consecutive batches of the given (uneven) sizes."""
    assert sum(sizes) == len(x)
    return list(zip(x.split(list(sizes)), y.split(list(sizes))))


def tiny_model(seed: int = 0) -> nn.Module:
    """Return a seeded one-layer model for the synthetic data."""
    torch.manual_seed(seed)
    return nn.Linear(N_FEATURES, N_CLASSES)


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return the fraction of rows whose argmax is the target."""
    return (pred.argmax(dim=1) == y).float().mean()


def make_learner(n_train: int = 3, n_valid: int | None = 2, bs: int = 4, **kwargs) -> Learner:
    """Return a quiet learner on synthetic data with `n_train` and `n_valid` batches of `bs`."""
    x, y = make_data(bs * (n_train + (n_valid or 0)))
    train = batches_of(x[: bs * n_train], y[: bs * n_train], [bs] * n_train)
    valid = None if n_valid is None else batches_of(x[bs * n_train :], y[bs * n_train :], [bs] * n_valid)
    kwargs.setdefault("default_cbs", False)
    kwargs.setdefault("loss_func", F.cross_entropy)
    return Learner(tiny_model(), (train, valid), **kwargs)


class Tracer(Callback):
    """Record every event it sees; optionally raise `error` at the `at`-th occurrence of `event`."""

    order = 1000

    def __init__(self, event: str | None = None, at: int = 0, error: Callable[[], BaseException] | None = None):
        self.trace: list[str] = []
        self.raise_event, self.raise_at, self.error = event, at, error
        self._seen = 0

    def _record(self, event: str) -> None:
        self.trace.append(event)
        if event == self.raise_event and self.error is not None:
            if self._seen == self.raise_at:
                self._seen += 1
                raise self.error()
            self._seen += 1


def _event_method(event: str) -> Callable[[Tracer], None]:
    def method(self: Tracer) -> None:
        self._record(event)

    method.__name__ = event
    return method


Tracer = type("Tracer", (Tracer,), {e: _event_method(e) for e in EVENTS})  # type: ignore[misc]


@pytest.fixture(autouse=True)
def close_figures():
    """Close the figures a test left open in pyplot (plots without a path stay open for `fig.show()`)."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture
def tracer_cls() -> type:
    """The event-recording callback class."""
    return Tracer
