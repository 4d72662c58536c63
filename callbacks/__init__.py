"""The callbacks that ship with loopkit; the first four are on every learner by default."""

from .checkpoint import SaveModel
from .csvlog import CSVLogger
from .distributed import Distributed, ShardBatchSampler
from .progress import ProgressBar
from .recorder import Recorder
from .stats import AvgStats, PhaseStats, WeightedSums, batch_size
from .stopping import EarlyStopping, TerminateOnNaN
from .training import TrainEval

__all__ = [
    "AvgStats",
    "CSVLogger",
    "Distributed",
    "EarlyStopping",
    "PhaseStats",
    "ProgressBar",
    "Recorder",
    "SaveModel",
    "ShardBatchSampler",
    "TerminateOnNaN",
    "TrainEval",
    "WeightedSums",
    "batch_size",
]
