"""Recorder: per-batch loss and hyper-parameters of every param group, and its plots."""

from __future__ import annotations

import gc
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from loopkit import Callback, CancelBatch, Learner
from loopkit.callbacks import ParamScheduler, Recorder, sched_cos
from tests.conftest import Tracer, batches_of, make_data, tiny_model


def make(opt_func=torch.optim.SGD, n_valid=2, **kwargs) -> Learner:
    x, y = make_data(40)
    dls = (batches_of(x[:24], y[:24], [4] * 6), batches_of(x[24:], y[24:], [8] * n_valid) if n_valid else None)
    learn = Learner(tiny_model(), dls, F.cross_entropy, opt_func=opt_func, **kwargs)
    learn.progress_bar.enabled = False
    return learn


def test_losses_are_the_training_batch_losses():
    seen = []

    class Spy(Callback):
        def after_loss(self):
            if self.training:
                seen.append(self.loss.item())

    learn = make(cbs=[Spy()])
    learn.fit(2)
    assert learn.recorder.losses == pytest.approx(seen)
    assert len(learn.recorder.losses) == 12 and learn.recorder.epoch_ends == [6, 12]


def test_hyper_parameters_of_every_group_with_mom_for_sgd_and_adam():
    class Halve(Callback):
        def after_batch(self):
            if self.training:
                for group in self.opt.param_groups:
                    group["lr"] /= 2

    learn = make(cbs=[Halve()])
    model = learn.model
    learn.opt = torch.optim.SGD([{"params": [model.weight], "lr": 1.0}, {"params": [model.bias], "lr": 4.0}], momentum=0.9)
    learn.fit(1)
    hps = learn.recorder.hps
    assert hps["lr"] == [[1.0 / 2**i for i in range(6)], [4.0 / 2**i for i in range(6)]]
    assert hps["mom"] == [[0.9] * 6, [0.9] * 6]
    assert learn.recorder.lrs == hps["lr"][-1] and learn.recorder.moms == [0.9] * 6
    adam = make(opt_func=lambda p, lr: torch.optim.Adam(p, lr=lr, betas=(0.8, 0.99)))
    adam.fit(1)
    assert adam.recorder.moms == [0.8] * 6 and "eps" in adam.recorder.hps


def test_record_is_fresh_for_each_fit_and_skips_batches_without_a_loss():
    learn = make(cbs=[Tracer("before_batch", at=2, error=CancelBatch)])
    learn.fit(1)
    assert len(learn.recorder.losses) == 5
    learn.fit(1)
    assert len(learn.recorder.losses) == 6


def test_plots_return_figures_and_save_png(tmp_path):
    learn = make()
    learn.fit(2)
    rec = learn.recorder
    for name, fig in [("loss", rec.plot_loss(path=tmp_path / "loss.png")),
                      ("lr", rec.plot_lr(path=tmp_path / "lr.png")),
                      ("sched", rec.plot_sched(path=tmp_path / "sched.png"))]:  # fmt: skip
        assert isinstance(fig, Figure)
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    train_line, valid_line = rec.plot_loss().axes[0].get_lines()
    assert list(train_line.get_ydata()) == pytest.approx(rec.losses)
    assert list(valid_line.get_ydata()) == pytest.approx([r["valid_loss"] for r in learn.avg_stats.history])
    assert len(rec.plot_loss(skip_start=4).axes[0].get_lines()[0].get_ydata()) == 8


def test_plots_can_be_shown_from_a_script_and_saved_ones_are_closed(tmp_path):
    import matplotlib.pyplot as plt

    learn = make()
    learn.fit(1)
    rec = learn.recorder
    for fig in (rec.plot_loss(), rec.plot_lr(), rec.plot_sched(), learn.lr_find(num_it=5).plot()):
        assert plt.fignum_exists(fig.number)  # registered with pyplot: fig.show() and plt.show() see it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the Agg backend of the tests warns that it cannot show
            fig.show()
    saved = rec.plot_loss(path=tmp_path / "loss.png")
    assert not plt.fignum_exists(saved.number) and saved.axes[0].get_lines()  # closed, still a whole figure


def test_plot_lr_and_plot_sched_take_a_log_scale():
    learn = make(opt_func=lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9))
    learn.fit_one_cycle(1, 0.1, div=1e4)
    rec = learn.recorder
    assert rec.plot_lr().axes[0].get_yscale() == "linear"
    assert rec.plot_lr(log=True).axes[0].get_yscale() == "log"
    assert [ax.get_yscale() for ax in rec.plot_sched(log=True).axes] == ["log", "log"]
    assert rec.plot_sched(["lr", "dampening"], log=True).axes[1].get_yscale() == "linear"  # 0 has no log


def test_plot_sched_has_one_panel_per_changing_name():
    class Anneal(Callback):
        def before_batch(self):
            if self.training:
                self.opt.param_groups[0]["lr"] = 1 - self.pct_train
                self.opt.param_groups[0]["momentum"] = self.pct_train

    learn = make(opt_func=lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.5), cbs=[Anneal()])
    learn.fit(1)
    fig = learn.recorder.plot_sched()
    assert [ax.get_title() for ax in fig.axes] == ["lr", "mom"]
    with pytest.raises(ValueError, match="recorded names are"):
        learn.recorder.plot_sched(["lrs"])


def test_plot_sched_shows_a_constant_schedule_too():
    from loopkit.callbacks import sched_cos, sched_no

    learn = make(opt_func=lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.5, weight_decay=0.1))
    learn.fit_one_cycle(1, lr_max=0.1, wd=0.01)  # weight decay is held constant: still scheduled
    assert learn.recorder.scheduled == ["lr", "mom", "weight_decay"]
    assert [ax.get_title() for ax in learn.recorder.plot_sched().axes] == ["lr", "mom", "weight_decay"]
    from loopkit.callbacks import ParamScheduler

    learn.fit(1, cbs=[ParamScheduler({"lr": sched_no(0.05), "mom": sched_cos(0.9, 0.8)})])
    assert [ax.get_title() for ax in learn.recorder.plot_sched().axes] == ["lr", "mom"]


class Repeat:
    """A loader with a length that yields the same batch `n` times (so the data keeps no memory per batch)."""

    def __init__(self, n: int) -> None:
        self.n, self.batch = n, tuple(make_data(4))

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter([self.batch] * self.n)


def objects_kept_per_batch(scheds=None) -> float:
    """Python objects (pymalloc blocks) that the fit holds on to per training batch, measured mid-fit.

    Counted at two batches 1,024 apart, each the last before a 256-batch fold, so the
    difference is what the record grows by. Before issue 11 it held a loss tensor
    object per batch until the epoch ended, and a row tuple per group per batch for
    good: at least 2 objects a batch. Bytes, tensor storage included, are the
    benchmark's business (recipes/recorder_memory.py); a block count is exact and fast.
    """
    counts = []

    class Count(Callback):
        order = 10  # after Recorder has recorded the batch

        def after_loss(self):
            if self.training and self.iter in (255, 1279):
                gc.collect()
                counts.append(sys.getallocatedblocks())

    learn = Learner(tiny_model(), (Repeat(1280), None), F.cross_entropy, default_cbs=False, cbs=[Recorder(), Count()],
                    opt_func=lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9))  # fmt: skip
    learn.fit(1, cbs=[ParamScheduler(scheds)] if scheds else [])
    assert len(learn.recorder.lrs) == 1280
    return (counts[1] - counts[0]) / 1024


def test_the_record_keeps_no_object_per_batch():
    assert objects_kept_per_batch() < 0.1  # losses fold into one tensor per 256 batches; constant hypers once
    # lr and mom change at every batch: their values go into arrays of floats, not objects
    assert objects_kept_per_batch({"lr": sched_cos(0.1, 0.001), "mom": sched_cos(0.95, 0.85)}) < 0.1


def test_losses_and_hps_are_exact_per_batch_across_folds_and_changes():
    seen = []

    class Spy(Callback):
        def after_loss(self):
            if self.training:
                seen.append((self.loss.item(), [g["lr"] for g in self.opt.param_groups]))

    class StepEvery(Callback):  # the lr changes every 100th batch only, the groups apart
        def before_batch(self):
            if self.training and self.iter % 100 == 0:
                for g, group in enumerate(self.opt.param_groups):
                    group["lr"] = 0.1 / (1 + g + self.iter)

    x, y = make_data(4 * 300)
    learn = Learner(tiny_model(), (batches_of(x, y, [4] * 300), None), F.cross_entropy, default_cbs=False,
                    cbs=[Recorder(), Spy(), StepEvery()])  # fmt: skip
    model = learn.model
    learn.opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.1)
    learn.fit(2)
    rec = learn.recorder
    assert rec.losses == [loss for loss, _ in seen] and len(rec.losses) == 600  # exact, past the 256-batch folds
    assert rec.hps["lr"] == [[lrs[g] for _, lrs in seen] for g in range(2)]
    assert rec.epoch_ends == [300, 600] and rec.iters == list(range(600))
    state = rec.state_dict()
    assert len(state["values"][0]) == 6  # one stored value per change, not one per batch


def test_state_dict_is_plain_data_and_round_trips(tmp_path):
    learn = make(opt_func=lambda p, lr: torch.optim.Adam(p, lr=lr))
    learn.fit_one_cycle(2, 0.01)
    rec = learn.recorder
    torch.save(rec.state_dict(), tmp_path / "rec.pt")
    other = make().recorder
    other.load_state_dict(torch.load(tmp_path / "rec.pt", weights_only=True))
    assert (other.losses, other.hps, other.epoch_ends, other.scheduled) == (rec.losses, rec.hps, rec.epoch_ends,
                                                                            rec.scheduled)  # fmt: skip


def test_load_state_dict_reads_the_per_batch_rows_of_older_checkpoints():
    learn = make(opt_func=lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9))
    learn.fit(1)
    # one tuple per group of (lr, momentum, dampening, weight_decay), as hyper_keys orders SGD's
    rows = [((0.1, 0.9, 0, 0.0),), ((0.05, 0.9, 0, 0.0),), ((0.05, 0.8, 0, 0.0),)]
    learn.recorder.load_state_dict({"losses": [1.0, 2.0, 3.0], "rows": rows, "epoch_ends": [3], "scheduled": []})
    assert learn.recorder.losses == [1.0, 2.0, 3.0]
    assert learn.recorder.lrs == [0.1, 0.05, 0.05] and learn.recorder.moms == [0.9, 0.9, 0.8]
    assert learn.recorder.hps["dampening"] == [[0, 0, 0]]
