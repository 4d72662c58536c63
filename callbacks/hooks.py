"""PyTorch hooks on chosen modules: `Hook`, `Hooks`, and `HooksCallback`, which holds them for a fit.

A hook calls `func(hook, module, inp, out)` after each forward of its module (or,
with `backward=True`, `func(hook, module, grad_input, grad_output)` when the
module's gradients are computed). `hook.stored` is free for the function to keep
what it likes. `Hook` and `Hooks` are context managers that remove their hooks on
exit; `HooksCallback` registers its hooks at `before_fit` and removes them at
`after_fit`, which fires whatever ends the fit.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from loopkit import Callback

HookFunc = Callable[["Hook", nn.Module, Any, Any], None]
# Which modules to hook: None (every leaf module with parameters), a name from
# model.named_modules(), a module class, a module instance, or a list of those.
ModuleSpec = None | str | type[nn.Module] | nn.Module | Iterable[str | type[nn.Module] | nn.Module]


def select_modules(model: nn.Module, modules: ModuleSpec = None) -> list[tuple[str, nn.Module]]:
    """Return `(name, module)` for each module of `model` that `modules` selects, in model order.

    `None` selects every leaf module (no children) that has parameters; a string
    selects the module of that name in `model.named_modules()`; a class selects
    every module of that class; a module selects itself. A list selects the
    union. Raises `ValueError` for a name or module that is not in `model`, or a
    class or default that selects nothing, and `TypeError` for anything else.
    """
    named = [(name, module) for name, module in model.named_modules() if name]  # "" is the model itself
    if not named:
        named = [("", model)]
    if modules is None:
        chosen = [(n, m) for n, m in named if next(m.children(), None) is None and next(m.parameters(False), None) is not None]
        if not chosen:
            raise ValueError(
                f"{type(model).__name__} has no leaf module with parameters to hook; choose modules by "
                "class or name, e.g. modules=nn.ReLU or modules=['0', '2']."
            )
        return chosen
    specs: list[Any] = [modules]
    if not isinstance(modules, (str, type, nn.Module)) and isinstance(modules, Iterable):  # a Sequential iterates
        specs = list(modules)
    wanted: set[int] = set()
    for spec in specs:
        wanted.update(id(m) for m in _match(model, named, spec))
    return [(n, m) for n, m in named if id(m) in wanted]


def _match(model: nn.Module, named: list[tuple[str, nn.Module]], spec: Any) -> list[nn.Module]:
    if isinstance(spec, str):
        found = [m for n, m in named if n == spec]
        if not found:
            names = [n for n, _ in named]
            close = difflib.get_close_matches(spec, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"{spec!r} is not the name of a module of {type(model).__name__}; {hint}"
                f"the names are those of model.named_modules(): {names[:12]}{' ...' if len(names) > 12 else ''}."
            )
        return found
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        found = [m for _, m in named if isinstance(m, spec)]
        if not found:
            raise ValueError(
                f"{type(model).__name__} has no module of class {spec.__name__} to hook; "
                f"its classes are {sorted({type(m).__name__ for _, m in named})}."
            )
        return found
    if isinstance(spec, nn.Module):
        if not any(m is spec for _, m in named):
            raise ValueError(
                f"{type(spec).__name__} module {spec!r} is not a module of this model, so hooking it would "
                "record nothing; pass a module of learn.model (or its name in model.named_modules())."
            )
        return [spec]
    raise TypeError(
        f"modules must be None, a module name, a module class, a module of the model, or a list of those; "
        f"got {spec!r}."
    )


class Hook:
    """Call `func(hook, module, inp, out)` after each forward of `module` until removed.

    With `backward=True` it is a full backward hook: `func(hook, module,
    grad_input, grad_output)` runs when the module's gradients are computed.
    `stored` is `None` until `func` sets it. As a context manager, the hook is
    removed on exit, also on error.
    """

    def __init__(self, module: nn.Module, func: HookFunc, backward: bool = False) -> None:
        self.module, self.func, self.backward = module, func, backward
        self.stored: Any = None
        register = module.register_full_backward_hook if backward else module.register_forward_hook
        self._handle = register(self._call)  # type: ignore[operator]  # both take (module, a, b)

    def _call(self, module: nn.Module, a: Any, b: Any) -> None:
        self.func(self, module, a, b)

    def remove(self) -> None:
        """Remove the hook from its module (a second call does nothing)."""
        self._handle.remove()

    def __enter__(self) -> Hook:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Hook({type(self.module).__name__}, {'backward' if self.backward else 'forward'})"


class Hooks:
    """Put a `Hook` with `func` on each module of `model` that `modules` selects (see `select_modules`).

    Iterate, index or `len()` it for the hooks, in model order; `names` holds the
    modules' names. As a context manager, every hook is removed on exit. Raises
    `ValueError` before hooking anything if `modules` names something not in `model`.
    """

    def __init__(self, model: nn.Module, func: HookFunc, modules: ModuleSpec = None, backward: bool = False) -> None:
        chosen = select_modules(model, modules)
        self.names = [name for name, _ in chosen]
        self.hooks = [Hook(module, func, backward) for _, module in chosen]

    def __iter__(self) -> Iterator[Hook]:
        return iter(self.hooks)

    def __len__(self) -> int:
        return len(self.hooks)

    def __getitem__(self, i: int) -> Hook:
        return self.hooks[i]

    def remove(self) -> None:
        """Remove every hook."""
        for hook in self.hooks:
            hook.remove()

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Hooks({self.names})"


class HooksCallback(Callback):
    """Hook modules of the model for each fit: subclass it and define `hook(hook, module, inp, out)`.

    Events: before_fit, after_fit. Reads: model, evaluating.
    Writes on the learner: nothing (the hooks sit on the model's modules during the fit).
    Publishes: `hooks` (the `Hooks` of the running fit, `None` outside one).
    order = -95: after `TrainEval` (-100) and before `Device` (-90) and
    `Distributed` (-30), so a bad `modules` is reported before anything moves or
    wraps the model, and names resolve on the model as you built it.

    The modules are chosen at each `before_fit` (see `select_modules`): a module
    that is not in the model is a `ValueError` there, before any batch. The hooks
    are removed at `after_fit`, which fires however the fit ends (normally, by a
    cancel, or by an error), so none stays on the model. Evaluations (`validate`,
    `get_preds`, `predict`) are hooked too only if the class sets
    `during_evaluations = True`.
    """

    order = -95
    during_evaluations = False

    def __init__(self, modules: ModuleSpec = None, backward: bool = False) -> None:
        self.modules, self.backward = modules, backward
        self.hooks: Hooks | None = None

    def hook(self, hook: Hook, module: nn.Module, inp: Any, out: Any) -> None:
        """Handle one call of one hooked module; override it (the base class does nothing)."""

    def before_fit(self) -> None:
        if self.learn.evaluating and not self.during_evaluations:
            return
        model = self.learn.model
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.hooks = Hooks(model, self.hook, self.modules, self.backward)

    def after_fit(self) -> None:
        if self.hooks is not None:
            self.hooks.remove()
            self.hooks = None
