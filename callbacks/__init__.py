"""The callbacks that ship with loopkit; the first four are on every learner by default."""

from .progress import ProgressBar
from .recorder import Recorder
from .stats import AvgStats, PhaseStats, WeightedSums, batch_size
from .training import TrainEval

__all__ = [
    "AvgStats",
    "PhaseStats",
    "ProgressBar",
    "Recorder",
    "TrainEval",
    "WeightedSums",
    "batch_size",
]
