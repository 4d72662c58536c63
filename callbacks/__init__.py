"""The callbacks that ship with loopkit; the first four are on every learner by default."""

from .accumulation import GradientAccumulation
from .checkpoint import SaveModel
from .csvlog import CSVLogger
from .device import Device, pick_device, to_device
from .distributed import Distributed, ShardBatchSampler
from .precision import GradientClip, MixedPrecision
from .progress import ProgressBar
from .recorder import Recorder
from .stats import AvgStats, PhaseStats, WeightedSums, batch_size
from .stopping import EarlyStopping, TerminateOnNaN
from .training import TrainEval

__all__ = [
    "AvgStats",
    "CSVLogger",
    "Device",
    "Distributed",
    "EarlyStopping",
    "GradientAccumulation",
    "GradientClip",
    "MixedPrecision",
    "PhaseStats",
    "ProgressBar",
    "Recorder",
    "SaveModel",
    "ShardBatchSampler",
    "TerminateOnNaN",
    "TrainEval",
    "WeightedSums",
    "batch_size",
    "pick_device",
    "to_device",
]
