"""loopkit: a small, hackable, callback-driven training loop for PyTorch."""

from .callback import Callback
from .data import DataLoaders, ImageData, TensorLoader, digits, image_folder, mnist_idx
from .events import (
    EVENTS,
    CancelBackward,
    CancelBatch,
    CancelEpoch,
    CancelException,
    CancelFit,
    CancelStep,
    CancelTrain,
    CancelValidate,
)
from .learner import Learner
from .seed import set_seed

__version__ = "0.1.0"

__all__ = [
    "EVENTS",
    "Callback",
    "CancelBackward",
    "CancelBatch",
    "CancelEpoch",
    "CancelException",
    "CancelFit",
    "CancelStep",
    "CancelTrain",
    "CancelValidate",
    "DataLoaders",
    "ImageData",
    "Learner",
    "TensorLoader",
    "digits",
    "image_folder",
    "mnist_idx",
    "set_seed",
]
