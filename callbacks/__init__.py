"""The callbacks that ship with loopkit; the first four are on every learner by default."""

from .accumulation import GradientAccumulation
from .checkpoint import SaveModel
from .csvlog import CSVLogger
from .device import Device, pick_device, to_device
from .distributed import Distributed, ShardBatchSampler
from .evaluation import GatherPreds, per_sample_loss_func
from .precision import GradientClip, MixedPrecision
from .preemption import Preemption
from .progress import ProgressBar
from .recorder import Recorder
from .schedule import (
    AnnealFunc,
    Annealer,
    LRFinder,
    LRFindResult,
    ParamScheduler,
    TorchScheduler,
    combine_scheds,
    one_cycle_scheds,
    preserve_state,
    sched_cos,
    sched_exp,
    sched_lin,
    sched_no,
    sched_poly,
)
from .stats import AvgStats, PhaseStats, WeightedSums, batch_size
from .stopping import EarlyStopping, TerminateOnNaN
from .training import TrainEval

__all__ = [
    "AnnealFunc",
    "Annealer",
    "AvgStats",
    "CSVLogger",
    "Device",
    "Distributed",
    "EarlyStopping",
    "GatherPreds",
    "GradientAccumulation",
    "GradientClip",
    "LRFindResult",
    "LRFinder",
    "MixedPrecision",
    "ParamScheduler",
    "PhaseStats",
    "Preemption",
    "ProgressBar",
    "Recorder",
    "SaveModel",
    "ShardBatchSampler",
    "TerminateOnNaN",
    "TorchScheduler",
    "TrainEval",
    "WeightedSums",
    "batch_size",
    "combine_scheds",
    "one_cycle_scheds",
    "per_sample_loss_func",
    "pick_device",
    "preserve_state",
    "sched_cos",
    "sched_exp",
    "sched_lin",
    "sched_no",
    "sched_poly",
    "to_device",
]
