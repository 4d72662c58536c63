"""The callbacks that ship with loopkit; the first four are on every learner by default."""

from .accumulation import GradientAccumulation
from .activations import ActivationStats, activation_row
from .checkpoint import SaveModel
from .compile import Compile
from .csvlog import CSVLogger
from .debug import FirstBatches, OverfitBatches, ShortEpoch
from .device import Device, Prefetcher, pick_device, to_device
from .distributed import Distributed, ShardBatchSampler
from .evaluation import GatherPreds, per_sample_loss_func
from .interpret import ClassificationInterpretation, TopLosses
from .lr_finder import LRFinder, LRFindResult
from .hooks import Hook, HookFunc, Hooks, HooksCallback, ModuleSpec, select_modules
from .params import NORM_TYPES, decay_groups, freeze, no_decay_params, unfreeze, wd_per_group
from .precision import GradientClip, MixedPrecision
from .preemption import Preemption
from .preserve import preserve_state
from .progress import ProgressBar
from .recorder import Recorder
from .schedule import (
    Annealer,
    AnnealFunc,
    ParamScheduler,
    TorchScheduler,
    combine_scheds,
    one_cycle_scheds,
    sched_cos,
    sched_exp,
    sched_lin,
    sched_no,
    sched_poly,
)
from .stats import AvgStats, PhaseStats, WeightedSums, batch_size
from .stopping import EarlyStopping, TerminateOnNaN
from .summary import Summary, summary
from .tensorboard import TensorBoardLogger
from .training import TrainEval

__all__ = [
    "ActivationStats",
    "AnnealFunc",
    "Annealer",
    "AvgStats",
    "CSVLogger",
    "ClassificationInterpretation",
    "Compile",
    "Device",
    "Distributed",
    "EarlyStopping",
    "FirstBatches",
    "GatherPreds",
    "GradientAccumulation",
    "GradientClip",
    "Hook",
    "HookFunc",
    "Hooks",
    "HooksCallback",
    "LRFindResult",
    "LRFinder",
    "MixedPrecision",
    "ModuleSpec",
    "NORM_TYPES",
    "OverfitBatches",
    "ParamScheduler",
    "PhaseStats",
    "Preemption",
    "Prefetcher",
    "ProgressBar",
    "Recorder",
    "SaveModel",
    "ShardBatchSampler",
    "ShortEpoch",
    "Summary",
    "TensorBoardLogger",
    "TerminateOnNaN",
    "TopLosses",
    "TorchScheduler",
    "TrainEval",
    "WeightedSums",
    "activation_row",
    "batch_size",
    "combine_scheds",
    "decay_groups",
    "freeze",
    "no_decay_params",
    "one_cycle_scheds",
    "per_sample_loss_func",
    "pick_device",
    "preserve_state",
    "sched_cos",
    "sched_exp",
    "sched_lin",
    "sched_no",
    "sched_poly",
    "select_modules",
    "summary",
    "to_device",
    "unfreeze",
    "wd_per_group",
]
