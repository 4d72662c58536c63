"""The closed list of loop events and the exceptions that cancel a stage.

`EVENTS` is the single source of event names: the docs page on the loop, the
typo check on callbacks and the dispatch tables are all built from it.
"""

EVENTS: tuple[str, ...] = (
    "before_fit",
    "before_epoch",
    "before_train",
    "before_batch",
    "after_pred",
    "after_loss",
    "before_backward",
    "after_backward",
    "before_step",
    "after_step",
    "after_batch",
    "after_train",
    "before_validate",
    "after_validate",
    "after_epoch",
    "after_fit",
    "after_cancel_batch",
    "after_cancel_backward",
    "after_cancel_step",
    "after_cancel_train",
    "after_cancel_validate",
    "after_cancel_epoch",
    "after_cancel_fit",
)


class CancelException(Exception):
    """Base of the cancel exceptions; raise one of its subclasses, never this."""

    stage: str = ""


class CancelBatch(CancelException):
    """Skip the rest of this batch; `after_cancel_batch` and `after_batch` fire."""

    stage = "batch"


class CancelBackward(CancelException):
    """Raised in `before_backward`: skip backward, the step and `zero_grad`."""

    stage = "backward"


class CancelStep(CancelException):
    """Raised in `before_step`: skip `opt.step()` and `opt.zero_grad()`; gradients are kept."""

    stage = "step"


class CancelTrain(CancelException):
    """Skip the rest of the training phase; validation still runs."""

    stage = "train"


class CancelValidate(CancelException):
    """Skip the rest of the validation phase."""

    stage = "validate"


class CancelEpoch(CancelException):
    """Skip the rest of this epoch; the next epoch starts as usual."""

    stage = "epoch"


class CancelFit(CancelException):
    """End the fit early; `after_cancel_fit` and `after_fit` fire and `fit` returns normally."""

    stage = "fit"


CANCELS: tuple[type[CancelException], ...] = (
    CancelBatch,
    CancelBackward,
    CancelStep,
    CancelTrain,
    CancelValidate,
    CancelEpoch,
    CancelFit,
)
