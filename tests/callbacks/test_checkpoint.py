"""Checkpoints: exact resume in a new process, atomic writes, safe loading, SaveModel, CSVLogger."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loopkit import Callback, Learner
from loopkit.callbacks import CSVLogger, SaveModel
from loopkit.callbacks import checkpoint as checkpoint_module
from tests.conftest import Tracer, make_learner, tiny_model

ROOT = Path(__file__).resolve().parents[2]


def run_job(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-m", "tests.callbacks.resume_job", *args], cwd=ROOT, check=True,
                   timeout=120, env={**os.environ, **(env or {})})  # fmt: skip


def resume_matches_straight(tmp_path: Path, env: dict[str, str] | None = None, n_epochs: int = 4, k: int = 2) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_job("straight", str(tmp_path / "a" / "out.pt"), str(n_epochs), env=env)
    run_job("stop", str(tmp_path / "b" / "first.pt"), str(n_epochs), str(k), env=env)
    run_job("resume", str(tmp_path / "b" / "out.pt"), str(n_epochs), str(tmp_path / "b" / "ckpt.pt"), env=env)
    straight = torch.load(tmp_path / "a" / "out.pt", weights_only=True)
    resumed = torch.load(tmp_path / "b" / "out.pt", weights_only=True)
    for got, want in zip(resumed["params"], straight["params"]):
        assert torch.equal(got, want)  # bitwise
    assert resumed["history"] == straight["history"]
    assert resumed["losses"] == straight["losses"]
    assert (tmp_path / "b" / "history.csv").read_text() == (tmp_path / "a" / "history.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("env", [{}, {"RESUME_JOB_ONE_CYCLE": "1"}, {"RESUME_JOB_ACCUMULATE": "20"},
                                 {"RESUME_JOB_ONE_CYCLE": "1", "RESUME_JOB_ACCUMULATE": "20"},
                                 {"RESUME_JOB_TENSOR_LOADER": "1", "RESUME_JOB_ONE_CYCLE": "1"}],
                         ids=["fit", "one_cycle", "accumulation", "one_cycle+accumulation", "tensor_loader"])  # fmt: skip
def test_resume_in_a_new_process_is_bitwise_exact(tmp_path, env):
    resume_matches_straight(tmp_path, env)


def test_checkpoint_is_plain_data_with_the_documented_keys(tmp_path):
    learn = make_learner(default_cbs=True)
    learn.progress_bar.enabled = False
    learn.fit(2)
    path = learn.save(tmp_path / "sub" / "ckpt.pt")
    state = torch.load(path, weights_only=True)
    assert {"format", "version", "model", "opt", "epoch", "n_epochs", "train_iter", "callbacks", "rng"} <= set(state)
    assert state["epoch"] == 1 and state["train_iter"] == 6 and set(state["model"]) == {"weight", "bias"}
    assert len(state["callbacks"]["avg_stats"]["history"]) == 2


def test_save_then_load_round_trip(tmp_path):
    learn = make_learner(opt_func=lambda p, lr: torch.optim.Adam(p, lr=lr))
    learn.fit(2)
    path = learn.save(tmp_path / "ckpt.pt")
    fresh = make_learner(opt_func=lambda p, lr: torch.optim.Adam(p, lr=lr))
    fresh.model.weight.data.zero_()
    fresh.load(path)
    assert torch.equal(fresh.model.weight, learn.model.weight)
    for (_, a), (_, b) in zip(fresh.opt.state_dict()["state"].items(), learn.opt.state_dict()["state"].items()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    no_opt = make_learner().load(path, with_opt=False)
    assert no_opt.opt is None and torch.equal(no_opt.model.bias, learn.model.bias)


def test_a_crash_while_writing_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    learn = make_learner()
    learn.fit(1)
    path = learn.save(tmp_path / "ckpt.pt")
    before = path.read_bytes()

    def crash(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    learn.fit(1)
    monkeypatch.setattr(checkpoint_module.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        learn.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind
    monkeypatch.undo()
    make_learner().load(path)


class Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_with_pickled_objects_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    learn = make_learner()
    learn.fit(1)
    state = torch.load(learn.save(tmp_path / "good.pt"), weights_only=True)
    state["rng"]["evil"] = Evil(str(marker))
    torch.save(state, tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(ValueError, match="refusing to load .*pickled objects"):
        make_learner().load(tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refusing"):
        make_learner().fit(3, resume=tmp_path / "evil.pt")
    assert not marker.exists()


def test_a_mismatched_model_lists_keys_and_shapes_and_changes_nothing(tmp_path):
    learn = make_learner()
    learn.fit(1)
    path = learn.save(tmp_path / "ckpt.pt")
    other = Learner(nn.Sequential(nn.Linear(4, 5)), learn.dls, F.cross_entropy)
    other_bias = nn.Linear(4, 3, bias=False)
    with pytest.raises(ValueError, match=r"missing keys \['0.bias', '0.weight'\], unexpected keys \['bias', 'weight'\]"):
        other.load(path)
    wider = make_learner()
    wider.model = nn.Linear(4, 5)
    before = wider.model.weight.detach().clone()
    with pytest.raises(ValueError, match=r"shape mismatches \[bias: checkpoint \(3,\) vs model \(5,\); weight"):
        wider.load(path)
    assert torch.equal(wider.model.weight, before)
    no_bias = make_learner()
    no_bias.model = other_bias
    with pytest.raises(ValueError, match=r"unexpected keys \['bias'\]"):
        no_bias.load(path)


def test_not_a_checkpoint_and_missing_file(tmp_path):
    torch.save({"weight": torch.zeros(3, 4)}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="not a loopkit checkpoint"):
        make_learner().load(tmp_path / "bare.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="damaged .* or not a torch file"):
        make_learner().load(tmp_path / "junk.pt")
    learn = make_learner()
    learn.fit(1)
    whole = learn.save(tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="damaged"):
        make_learner().load(tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError, match="learn.save"):
        make_learner().load(tmp_path / "nope.pt")


def test_resume_that_has_nothing_left_or_changes_n_epochs(tmp_path):
    learn = make_learner()
    learn.fit(2)
    path = learn.save(tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="nothing left to do"):
        make_learner().fit(2, resume=path)
    tracer = Tracer()
    with pytest.warns(UserWarning, match="resuming a fit of 2 epochs as one of 4"):
        make_learner(cbs=[tracer]).fit(4, resume=path)
    assert tracer.trace.count("before_epoch") == 2


def test_save_model_keeps_the_best_epoch_and_every_epoch(tmp_path):
    scripted = [0.9, 0.5, 0.7, 0.4, 0.6]
    weights = {}

    class Script(Callback):
        order = -10  # after AvgStats wrote the row, before SaveModel reads it

        def after_epoch(self):
            self.avg_stats.history[-1]["valid_loss"] = scripted[self.epoch]
            weights[self.epoch] = self.model.weight.detach().clone()

    learn = make_learner(default_cbs=True, cbs=[Script(), SaveModel(path=tmp_path / "best.pt", every_epoch=True)])
    learn.progress_bar.enabled = False
    learn.fit(5)
    assert (learn.save_model.best, learn.save_model.best_epoch) == (0.4, 3)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert torch.equal(best["model"]["weight"], weights[3]) and best["epoch"] == 3
    for epoch in range(5):
        saved = torch.load(tmp_path / f"best_epoch{epoch}.pt", weights_only=True)
        assert torch.equal(saved["model"]["weight"], weights[epoch])
    learn.remove_cbs(SaveModel).add_cbs(SaveModel(path=tmp_path / "restore.pt", restore_best=True))
    weights.clear()
    learn.fit(5)
    assert not torch.equal(learn.model.weight, weights[4])
    assert torch.equal(learn.model.weight, weights[3])


def test_save_model_monitor_errors_come_before_the_first_epoch():
    tracer = Tracer()
    learn = make_learner(default_cbs=True, cbs=[SaveModel(monitor="accuracy"), tracer])
    learn.progress_bar.enabled = False
    with pytest.raises(ValueError, match=r"cannot monitor 'accuracy'.*\['epoch', 'train_loss', 'valid_loss'\]"):
        learn.fit(1)
    assert "before_epoch" not in tracer.trace
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        SaveModel(mode="best")
    with pytest.raises(ValueError, match="needs AvgStats"):
        make_learner(cbs=[SaveModel()]).fit(1)
    with pytest.raises(ValueError, match="CSVLogger writes the rows of AvgStats"):
        make_learner(cbs=[CSVLogger()]).fit(1)


def test_csv_logger_writes_a_row_per_epoch_and_starts_fresh_each_fit(tmp_path):
    path = tmp_path / "log" / "history.csv"
    learn = make_learner(default_cbs=True, cbs=[CSVLogger(path)])
    learn.progress_bar.enabled = False
    learn.fit(3)
    rows = list(csv.DictReader(path.open()))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert float(rows[2]["valid_loss"]) == learn.avg_stats.history[2]["valid_loss"]
    learn.fit(1)
    assert len(list(csv.DictReader(path.open()))) == 1


def test_interrupt_keeps_the_weights_and_the_learner_usable():
    # 3 train + 2 valid batches an epoch: the 7th after_batch is epoch 1's second training batch.
    learn = make_learner(default_cbs=True, cbs=[Tracer("after_batch", at=6, error=KeyboardInterrupt)])
    learn.progress_bar.enabled = False
    start = tiny_model().weight.detach().clone()
    with pytest.raises(KeyboardInterrupt):
        learn.fit(3)
    trained = learn.model.weight.detach().clone()
    assert not torch.equal(trained, start)  # the five steps taken are kept
    assert learn.train_iter == 5 and learn.tracer.trace[-1] == "after_fit"
    learn.fit(1)
    assert learn.train_iter == 3 and len(learn.avg_stats.history) == 1
