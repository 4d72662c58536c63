"""TensorBoardLogger: the event files read back hold the fit's scalars, once per step, also after a resume."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from loopkit import CancelFit, Learner
from loopkit.callbacks import ParamScheduler, SaveModel, TensorBoardLogger, sched_lin
from tests.callbacks.test_stats import count_syncs
from tests.conftest import Tracer, accuracy, batches_of, make_data, tiny_model

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read_run(log_dir) -> EventAccumulator:
    """Load every event file of `log_dir`, as TensorBoard does (purges included)."""
    run = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    run.Reload()
    return run


def steps(run: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in run.Scalars(tag)]


def values(run: EventAccumulator, tag: str) -> list[float]:
    return [event.value for event in run.Scalars(tag)]


def learner(**kwargs) -> Learner:
    x, y = make_data(36)
    dls = (batches_of(x[:24], y[:24], [5, 7, 4, 8]), batches_of(x[24:], y[24:], [5, 7]))
    learn = Learner(tiny_model(), dls, F.cross_entropy, lr=0.1, metrics=[accuracy], **kwargs)
    learn.progress_bar.enabled = False
    return learn


def test_scalars_per_batch_and_per_epoch_equal_what_recorder_and_avg_stats_hold(tmp_path):
    learn = learner(opt_func=torch.optim.Adam)
    scheds = {"lr": sched_lin(0.1, 0.01), "weight_decay": [sched_lin(0.0, 0.1)]}
    learn.fit(2, cbs=[TensorBoardLogger(tmp_path), ParamScheduler(scheds)])
    run = read_run(tmp_path)
    tags = set(run.Tags()["scalars"])
    assert {"batch/loss", "batch/lr", "batch/mom", "batch/weight_decay", "train/loss", "valid/loss",
            "valid/accuracy"} <= tags  # fmt: skip
    assert "batch/eps" not in tags  # not scheduled: constant, left out
    rec = learn.recorder
    assert steps(run, "batch/loss") == steps(run, "batch/lr") == list(range(1, 9))
    assert values(run, "batch/loss") == pytest.approx(rec.losses, rel=1e-6)
    assert values(run, "batch/lr") == pytest.approx(rec.lrs, rel=1e-6)
    assert values(run, "batch/mom") == pytest.approx(rec.moms, rel=1e-6)
    assert values(run, "batch/weight_decay") == pytest.approx(rec.hps["weight_decay"][0], abs=1e-7)
    history = learn.avg_stats.history
    assert steps(run, "train/loss") == steps(run, "valid/accuracy") == [4, 8]  # batches done at each epoch's end
    assert values(run, "train/loss") == pytest.approx([row["train_loss"] for row in history], rel=1e-6)
    assert values(run, "valid/accuracy") == pytest.approx([row["accuracy"] for row in history], rel=1e-6)
    # the run's hyper-parameters, with its final figures
    assert steps(run, "hparam/valid_loss") == [8]
    assert values(run, "hparam/valid_loss") == pytest.approx([history[1]["valid_loss"]], rel=1e-6)
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(run.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(0.1) and hparams["n_epochs"].number_value == 2
    assert hparams["opt"].string_value == "Adam" and hparams["loss_func"].string_value == "cross_entropy"


def test_several_param_groups_and_histograms_every_n_epochs(tmp_path):
    learn = learner()
    model = learn.model
    learn.opt = torch.optim.SGD([{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.2}])
    learn.fit(3, cbs=[TensorBoardLogger(tmp_path, hist_every=2)])
    run = read_run(tmp_path)
    assert values(run, "batch/lr/group1") == pytest.approx([0.2] * 12)
    assert values(run, "batch/lr/group0") == pytest.approx([0.1] * 12)
    assert sorted(run.Tags()["histograms"]) == ["gradients/bias", "gradients/weight", "weights/bias", "weights/weight"]
    assert [e.step for e in run.Histograms("weights/weight")] == [8]  # the end of epoch 1 (the second)
    assert [e.step for e in run.Histograms("gradients/weight")] == [5]  # epoch 1's first batch


def test_consecutive_fits_continue_one_run(tmp_path):
    learn = learner()
    logger = TensorBoardLogger(tmp_path)
    learn.add_cbs(logger)
    assert learn.tensorboard_logger is logger
    learn.fit(1)
    learn.validate()  # an evaluation writes nothing
    learn.lr_find(num_it=5)  # nor does a sweep
    learn.fit(1)
    run = read_run(tmp_path)
    assert steps(run, "batch/loss") == list(range(1, 9))
    assert steps(run, "valid/loss") == [4, 8]


def test_a_resumed_fit_continues_the_run_without_duplicate_steps(tmp_path):
    straight = tmp_path / "straight"
    learn = learner()
    learn.fit(4, cbs=[TensorBoardLogger(straight)])
    want = read_run(straight)

    resumed = tmp_path / "resumed"
    ckpt = tmp_path / "ckpt.pt"
    learn = learner()
    # after_batch 13 is epoch 2's second training batch (each epoch has 4 training and 2 validation batches)
    crash = Tracer("after_batch", at=13, error=RuntimeError)
    with pytest.raises(RuntimeError):
        learn.fit(4, cbs=[TensorBoardLogger(resumed), SaveModel(path=ckpt, every_epoch=True), crash])
    interrupted = read_run(resumed)
    assert steps(interrupted, "batch/loss") == list(range(1, 11))  # with epoch 2's two batches, written at after_fit
    learn = learner()
    learn.fit(4, cbs=[TensorBoardLogger(resumed), SaveModel(path=tmp_path / "again.pt", every_epoch=True)],
              resume=tmp_path / "ckpt_epoch1.pt")  # fmt: skip
    got = read_run(resumed)
    for tag in ("batch/loss", "batch/lr", "train/loss", "valid/loss", "valid/accuracy", "hparam/valid_loss"):
        assert steps(got, tag) == steps(want, tag), tag
        assert values(got, tag) == pytest.approx(values(want, tag), rel=1e-6), tag


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # what torchrun sets; no process group is up in this test
    learner().fit(1, cbs=[TensorBoardLogger(tmp_path / "logs")])
    assert not (tmp_path / "logs").exists()


def test_the_per_batch_cost_is_an_append_with_no_host_sync(monkeypatch, tmp_path):
    counts = {}
    for n_batches in (10, 40):
        x, y = make_data(4 * n_batches)
        batches = batches_of(x, y, [4] * n_batches)
        learn = Learner(tiny_model(), (batches, None), F.cross_entropy, default_cbs=False,
                        cbs=[TensorBoardLogger(tmp_path / str(n_batches))])  # fmt: skip
        with monkeypatch.context() as patch:
            counted = count_syncs(patch)
            learn.fit(2)
        counts[n_batches] = dict(counted)
    assert counts[10] == counts[40] and counts[10]["tolist"] == 2, counts  # one read per epoch


def test_bad_log_dir_and_missing_extra_are_clear_errors(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    learn = learner()
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match="cannot create its log_dir .*a_file/logs"):
        learn.fit(1, cbs=[TensorBoardLogger(tmp_path / "a_file" / "logs")])
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))
    with pytest.raises(ValueError, match="hist_every"):
        TensorBoardLogger(tmp_path, hist_every=0)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ImportError, match=r'pip install "loopkit\[tensorboard\]"'):
        TensorBoardLogger(tmp_path)


def test_a_cancelled_fit_still_writes_its_hparams(tmp_path):
    learn = learner()
    learn.fit(3, cbs=[TensorBoardLogger(tmp_path), Tracer("after_epoch", at=0, error=CancelFit)])
    run = read_run(tmp_path)
    assert steps(run, "hparam/train_loss") == [4]
