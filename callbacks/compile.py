"""Run the model compiled by `torch.compile`: the `Compile` callback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from loopkit import Callback


def _backends() -> list[str]:
    return sorted(torch._dynamo.list_backends(exclude_tags=()))


def _modes() -> list[str]:
    import torch._inductor

    return sorted(torch._inductor.list_mode_options())


def _entry(forward: Callable[..., Any]) -> Callable[..., Any]:
    # torch.compile skips a top frame that lives in torch's own files (nn.Sequential.forward,
    # Conv2d.forward), so `model.compile()` silently runs those models eagerly (pytorch#150915).
    # This function is loopkit's code: dynamo traces it and inlines the model's forward.
    def compiled_forward(*args: Any, **kwargs: Any) -> Any:
        return forward(*args, **kwargs)

    return compiled_forward


class Compile(Callback):
    """Run the model's forward compiled by `torch.compile` during fits and evaluations.

    Events: before_fit, after_fit. Reads: model.
    Writes on the learner: nothing. On the model instance, `forward` is set to the compiled
    forward from `before_fit` to `after_fit` (then the class's forward is back), so
    `learn.model` stays the same module: its `state_dict()` and checkpoints keep their keys
    (no `_orig_mod.` prefix), and hooks on it still run.
    Publishes: nothing besides its settings.
    order = -40: after `Device` (-90) placed the model and before `Distributed` (-30)
    wraps it in DDP, so DDP runs the compiled forward.

    `mode`, `backend`, `fullgraph` and `dynamic` are `torch.compile`'s. A model is compiled
    at the first `before_fit` (of a fit or an evaluation) that sees it; code is generated at
    its first call and reused by later batches, fits and evaluations. Only the forward is
    compiled (backward follows through AOTAutograd); the optimizer's step is not, so a
    scheduled hyper-parameter (lr, momentum) is never part of a graph and never causes a
    recompile. Training and validation (train/eval mode, grad/no_grad) are separate graphs.
    With `dynamic=None` (torch's default) a batch of a new size, such as a short last
    batch, compiles once more and the graph then treats the batch size as dynamic;
    `dynamic=True` starts dynamic, so it never recompiles for a size; `dynamic=False`
    compiles each size it sees.

    Raises `ValueError` at construction for a backend torch does not list
    (`torch._dynamo.list_backends(exclude_tags=())`), a `mode` inductor does not know, or
    a `mode` with another backend (only inductor takes one).
    """

    order = -40

    def __init__(self, mode: str | None = None, backend: str | Callable[..., Any] = "inductor", fullgraph: bool = False,
                 dynamic: bool | None = None) -> None:  # fmt: skip
        if not isinstance(backend, str) and not callable(backend):
            raise TypeError(f"Compile: backend is a backend's name, such as 'inductor', or a callable; got {backend!r}.")
        if isinstance(backend, str) and backend not in _backends():
            raise ValueError(
                f"Compile: unknown backend {backend!r}; torch.compile knows {_backends()}. "
                "Use 'inductor' (the default) to generate code, or 'aot_eager' to check a model compiles."
            )
        if mode is not None:
            if backend != "inductor":
                raise ValueError(
                    f"Compile: mode={mode!r} is an inductor setting, and the backend is {backend!r}; "
                    "drop mode, or use backend='inductor'."
                )
            if mode not in _modes():
                raise ValueError(f"Compile: unknown mode {mode!r}; inductor's modes are {_modes()}, or None.")
        if dynamic is not None and not isinstance(dynamic, bool):
            raise TypeError(f"Compile: dynamic is True, False or None (torch decides); got {dynamic!r}.")
        self.mode, self.backend, self.fullgraph, self.dynamic = mode, backend, bool(fullgraph), dynamic
        # (model, its compiled forward): kept across fits, so a later fit reuses the compiled code.
        self._forwards: list[tuple[nn.Module, Callable[..., Any]]] = []
        self._installed: nn.Module | None = None
        self._saved: Any = None

    def before_fit(self) -> None:
        model = self.learn.model
        compiled = next((forward for done, forward in self._forwards if done is model), None)
        if compiled is None:
            compiled = torch.compile(_entry(model.forward), mode=self.mode, backend=self.backend,
                                     fullgraph=self.fullgraph, dynamic=self.dynamic)  # fmt: skip
            self._forwards.append((model, compiled))
        # An instance attribute shadows the class's forward; nn.Module.__call__ calls it.
        self._installed, self._saved = model, model.__dict__.get("forward", _MISSING)
        model.forward = compiled

    def after_fit(self) -> None:
        model, self._installed = self._installed, None
        if model is None:
            return
        if self._saved is _MISSING:
            del model.forward
        else:
            model.forward = self._saved

    def __repr__(self) -> str:
        backend = self.backend if isinstance(self.backend, str) else getattr(self.backend, "__name__", "callable")
        return f"Compile(mode={self.mode!r}, backend={backend!r}, fullgraph={self.fullgraph}, dynamic={self.dynamic})"


_MISSING = object()
