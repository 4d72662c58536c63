"""Hold Ctrl-C while the optimizer steps, so an interrupt never leaves a half-applied step."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType


class StepGuard:
    """Defer SIGINT that lands between `stepping = True` and `step_done()` until the latter.

    Entered for a whole fit: it installs its handler only in the main thread and only
    over Python's default one (a handler the user installed is left alone). Outside a
    step the handler raises `KeyboardInterrupt` at once, as the default does; inside
    one it notes the interrupt, and `step_done()` raises it once the step and
    `zero_grad` are complete, so the model holds the weights of the last whole step.
    """

    def __init__(self) -> None:
        self.stepping = False
        self.pending = False
        self._installed = False

    def __enter__(self) -> StepGuard:
        self.stepping = self.pending = False
        if threading.current_thread() is threading.main_thread() and (
            signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stepping:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def step_done(self) -> None:
        """End the step; raise the `KeyboardInterrupt` that arrived during it, if any."""
        self.stepping = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.stepping = False
        if self._installed:
            self._installed = False
            signal.signal(signal.SIGINT, signal.default_int_handler)
