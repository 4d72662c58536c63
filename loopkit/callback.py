"""The `Callback` base class: subclass it and define the events you need."""

from __future__ import annotations

import difflib
import re
import warnings
from typing import TYPE_CHECKING, Any

from .events import EVENTS

if TYPE_CHECKING:
    from .learner import Learner

_EVENT_SET = frozenset(EVENTS)
_EVENT_LIKE = re.compile(r"^(before|after|on|begin)_")
_SQUASHED = {event.replace("_", ""): event for event in EVENTS}  # afterbatch -> after_batch


def snake_name(cls_name: str) -> str:
    """Turn a class name into its learner attribute: `GradientClip` -> `gradient_clip`."""
    if cls_name.endswith("Callback") and cls_name != "Callback":
        cls_name = cls_name[: -len("Callback")]
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", cls_name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


class Callback:
    """Listen to loop events: subclass and define methods named after events.

    Only the event methods a subclass defines are called, so an event you don't
    define costs nothing. Inside an event method, `self.model`, `self.loss`,
    `self.epoch`... read the learner's attributes; write them with
    `self.learn.x = ...`. A callback is reachable on its learner by its
    snake-case class name (`learn.sample_counter`), or by `name` if the class
    sets it. Lower `order` runs first; ties keep insertion order.
    """

    order: int = 0
    name: str | None = None
    learn: Learner = None  # type: ignore[assignment]  # set when the callback is added

    @classmethod
    def events(cls) -> tuple[str, ...]:
        """Return the events this class defines, in `EVENTS` order."""
        return tuple(e for e in EVENTS if callable(getattr(cls, e, None)))

    @classmethod
    def check_events(cls) -> None:
        """Raise `ValueError` if the class defines an event-like method that is no event."""
        for attr in dir(cls):
            squashed = _SQUASHED.get(attr.replace("_", "").lower())
            looks_like = _EVENT_LIKE.match(attr) or squashed is not None
            if looks_like and attr not in _EVENT_SET and callable(getattr(cls, attr)):
                close = [squashed] if squashed else difflib.get_close_matches(attr, EVENTS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else "."
                raise ValueError(
                    f"{cls.__name__} defines {attr!r}, which is not a loopkit event{hint} "
                    "The events are listed in loopkit.EVENTS; rename the method if it is a helper."
                )

    @property
    def cb_name(self) -> str:
        """The name this callback has on its learner."""
        return self.name or snake_name(type(self).__name__)

    def __getattr__(self, attr: str) -> Any:
        # Only reads are delegated, and only to a learner we are attached to.
        if attr.startswith("__") or attr in ("learn", "name", "order"):
            raise AttributeError(attr)
        learn = self.__dict__.get("learn")
        if learn is None:
            raise AttributeError(
                f"{type(self).__name__} has no attribute {attr!r}, and it is not attached to a "
                "learner to read it from; add it with learn.add_cbs(...) first."
            )
        return getattr(learn, attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        own = self.__dict__  # an attribute the callback already has is set at once (the hot path)
        if (
            attr not in own
            and attr[:1] != "_"
            and (learn := own.get("learn")) is not None
            and attr in learn.__dict__
        ):
            warnings.warn(
                f"{type(self).__name__} sets self.{attr}, which shadows the learner attribute "
                f"{attr!r} for this callback only; to change the learner's, assign "
                f"self.learn.{attr} = ...",
                stacklevel=2,
            )
        object.__setattr__(self, attr, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
