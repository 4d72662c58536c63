"""Checkpoints: exact resume in a new process, atomic writes, safe loading, SaveModel, CSVLogger."""

from __future__ import annotations

import copy
import csv
import os
import random
import signal
import stat
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch.utils.data import DataLoader, TensorDataset

from loopkit import Callback, CancelFit, Learner, TensorLoader
from loopkit.callbacks import CSVLogger, EarlyStopping, GradientAccumulation, SaveModel
from loopkit.callbacks import checkpoint as checkpoint_module
from tests.callbacks.resume_job import build
from tests.conftest import Tracer, make_data, make_learner, tiny_model

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
    assert {"format", "version", "model", "opt", "epoch", "n_epochs", "batch", "train_iter", "callbacks", "rng",
            "phase_rng", "loader"} <= set(state)  # fmt: skip
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


# -- refusing a file: checked whole before anything changes (issue 11) -------------------------


def snapshot(learn: Learner) -> dict[str, Any]:
    """Return a deep copy of everything a load may change: weights, optimizer, callbacks, position."""
    return copy.deepcopy({
        "model": learn.model.state_dict(),
        "opt": learn.opt.state_dict() if learn.opt is not None else None,
        "callbacks": {cb.cb_name: cb.state_dict() for cb in learn.cbs if hasattr(cb, "state_dict")},
        "position": (learn.epoch, learn.train_iter),
    })  # fmt: skip


def assert_same(got: Any, want: Any) -> None:
    """Assert two snapshots are equal, tensors bitwise."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8))  # nan too
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want)
        for key in want:
            assert_same(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want)
        for a, b in zip(got, want):
            assert_same(a, b)
    else:
        assert got == want or (got != got and want != want)  # nan == nan here


def adamw(params, lr):
    return torch.optim.AdamW(params, lr=lr)


def sgd_momentum(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def trained(**kwargs: Any) -> Learner:
    """Return a learner with default callbacks that has trained an epoch (so it has optimizer state)."""
    kwargs.setdefault("opt_func", sgd_momentum)
    learn = make_learner(default_cbs=True, **kwargs)
    learn.progress_bar.enabled = False
    learn.fit(1, lr=0.05)
    return learn


def two_groups(params, lr):
    weight, bias = params if isinstance(params, list) else list(params)
    return torch.optim.SGD([{"params": [weight]}, {"params": [bias]}], lr=lr, momentum=0.9)


def swapped_groups(params, lr):
    weight, bias = list(params)
    return torch.optim.SGD([{"params": [bias]}, {"params": [weight]}], lr=lr, momentum=0.9)


def damage(state: dict[str, Any], how: str) -> None:
    """Damage a checkpoint's contents in place, as a file from elsewhere or a broken disk would."""
    if how in ("no model", "no opt", "no callbacks"):
        del state[how.split()[1]]
    elif how == "torch rng cut":
        state["rng"]["torch"] = state["rng"]["torch"][:-1]
    elif how == "python rng index":
        version, internal, gauss = state["rng"]["python"]
        state["rng"]["python"] = (version, (*internal[:-1], 700), gauss)
    elif how == "numpy rng dtype":
        name, keys, *rest = state["rng"]["numpy"]
        state["rng"]["numpy"] = (name, keys.float(), *rest)
    elif how == "callback state":
        del state["callbacks"]["avg_stats"]["valid"]
    elif how == "momentum for another shape":
        state["opt"]["state"][0]["momentum_buffer"] = torch.zeros(7)
    elif how == "version 1 without opt_class":  # older files: the groups' keys still tell AdamW from SGD
        state["version"] = 1
        del state["opt_class"]


@pytest.mark.parametrize("saved_with, how, match", [
    (adamw, None, r"holds the state of a AdamW optimizer but this learner's is a SGD"),
    (adamw, "version 1 without opt_class", r"param groups have 'momentum' = 'nothing'"),
    (two_groups, None, r"optimizer with 2 param group\(s\) of \[1, 1\] parameters, but this learner's has 1 of \[2\]"),
    (sgd_momentum, "momentum for another shape", r"state 'momentum_buffer' of shape \(7,\) for a parameter of shape"),
    (sgd_momentum, "no model", r"it has no \['model'\] entry"),
    (sgd_momentum, "no opt", r"it has no \['opt'\] entry"),
    (sgd_momentum, "no callbacks", r"it has no \['callbacks'\] entry"),
    (sgd_momentum, "torch rng cut", r"'rng' entry holds an invalid RNG state"),
    (sgd_momentum, "python rng index", r"'rng' entry holds an invalid RNG state"),
    (sgd_momentum, "numpy rng dtype", r"'rng' entry holds an invalid RNG state"),
    (sgd_momentum, "callback state", r"AvgStats could not restore its state"),
])  # fmt: skip
@pytest.mark.parametrize("via", ["load", "resume"])
def test_a_refused_checkpoint_names_the_file_and_leaves_the_learner_bitwise_unchanged(
    tmp_path, saved_with, how, match, via
):
    saved = trained(opt_func=saved_with)
    state = torch.load(saved.save(tmp_path / "good.pt"), weights_only=True)
    if how is not None:
        damage(state, how)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    learn = trained()
    learn.model.weight.data.add_(1.0)  # differ from the file, so a partial load would show
    tracer = Tracer()
    learn.add_cbs(tracer)
    before = snapshot(learn)
    with pytest.raises(ValueError, match=match) as refused:
        if via == "load":
            learn.load(path)
        else:
            learn.fit(3, resume=path)
    assert str(path) in str(refused.value)
    assert_same(snapshot(learn), before)
    if via == "resume":  # refused when read, before the fit starts
        assert "before_fit" not in tracer.trace


def test_a_checkpoint_with_groups_in_another_order_is_refused(tmp_path):
    path = trained(opt_func=swapped_groups).save(tmp_path / "ckpt.pt")
    learn = trained(opt_func=two_groups)
    before = snapshot(learn)
    with pytest.raises(ValueError, match=r"'momentum_buffer' of shape \(3,\) for a parameter of shape \(3, 4\)"):
        learn.load(path)
    assert_same(snapshot(learn), before)


def test_a_version_1_checkpoint_still_loads(tmp_path):
    learn = trained()
    state = torch.load(learn.save(tmp_path / "new.pt"), weights_only=True)
    assert state["version"] == 3 and state["opt_class"] == "SGD" and state["batch"] == 0
    state["version"] = 1
    for key in ("opt_class", "batch", "phase_rng", "loader"):
        del state[key]
    torch.save(state, tmp_path / "old.pt")
    fresh = make_learner(default_cbs=True, opt_func=sgd_momentum).load(tmp_path / "old.pt")
    assert_same(fresh.opt.state_dict(), learn.opt.state_dict())


def test_weights_for_another_optimizer_load_with_with_opt_false(tmp_path):
    path = trained(opt_func=adamw).save(tmp_path / "ckpt.pt")
    learn = make_learner(opt_func=sgd_momentum).load(path, with_opt=False)
    assert learn.opt is None
    learn.fit(1)
    assert isinstance(learn.opt, torch.optim.SGD)


def test_every_byte_flip_loads_or_is_refused_by_name_without_changes(tmp_path):
    # 200 seeded mutations of a real checkpoint. Each either loads, leaving a learner that
    # trains, or raises a ValueError naming the file with the learner bitwise unchanged.
    # Before issue 11, about one in twenty escaped as KeyError, OverflowError or
    # UnicodeDecodeError after the weights had been replaced.
    random.seed(0)  # the file holds the global RNG states: seed them, so the file and the test are the same every run
    np.random.seed(0)
    good = trained(opt_func=adamw).save(tmp_path / "good.pt").read_bytes()
    path = tmp_path / "flipped.pt"
    learn = trained(opt_func=adamw)
    learn.fit(1)  # a learner that differs from the file, so a partial load would show
    rng = random.Random(11)
    refused = 0
    for _ in range(200):
        data = bytearray(good)
        pos = rng.randrange(len(data))
        data[pos] = (data[pos] + rng.randrange(1, 256)) % 256
        path.write_bytes(bytes(data))
        before = snapshot(learn)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. a callback name that no longer matches
                learn.load(path)
        except ValueError as err:
            refused += 1
            assert str(path) in str(err), f"byte {pos}: {err}"
            assert_same(snapshot(learn), before)
        else:
            learn.fit(1)  # loaded: it must still train (and then differs from the file again)
    assert 0 < refused < 200


def test_loading_weights_for_inference_does_not_warn_about_loaders(tmp_path):
    learn = trained()
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    generator = torch.Generator().manual_seed(0)
    learn.dls = (DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=generator), None)
    path = learn.save(tmp_path / "ckpt.pt")
    assert len(torch.load(path, weights_only=True)["rng"]["loaders"]) == 1
    predictor = Learner(tiny_model(), ([], None), F.cross_entropy, default_cbs=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor.load(path, with_opt=False)
    assert torch.equal(predictor.model.weight, learn.model.weight)
    shuffled = make_learner(default_cbs=True, opt_func=sgd_momentum)
    shuffled.dls = (DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), None)  # from no generator
    with pytest.warns(UserWarning, match="1 loader generator state"):
        shuffled.load(path)


def test_resuming_without_a_callback_warns_that_its_state_is_dropped(tmp_path):
    learn = make_learner(default_cbs=True, cbs=[EarlyStopping(patience=5)])
    learn.progress_bar.enabled = False
    learn.fit(1)
    path = learn.save(tmp_path / "ckpt.pt")
    without = make_learner(default_cbs=True)
    without.progress_bar.enabled = False
    with pytest.warns(UserWarning) as record:
        without.fit(3, resume=path)
    assert any("state of callback(s) ['early_stopping'] that this learner lacks" in str(w.message) for w in record)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_learner(default_cbs=True).load(path, with_opt=False)  # weights for inference: quiet


# -- saving: interrupts, temporary files, modes (issue 11) -------------------------------------


def test_ctrl_c_inside_torch_save_is_a_keyboard_interrupt_and_keeps_the_old_file(tmp_path, monkeypatch):
    learn = make_learner()
    learn.fit(1)
    path = learn.save(tmp_path / "ckpt.pt")
    before = path.read_bytes()
    real_save = torch.save

    def save_with_ctrl_c(obj, file, *args, **kwargs):
        # The real torch.save, writing through a file whose third write receives SIGINT:
        # Ctrl-C landing mid-write, where torch turns it into "[enforce fail] unexpected pos".
        class Interrupted:
            writes = 0

            def write(self, data):
                self.writes += 1
                if self.writes == 3:
                    signal.raise_signal(signal.SIGINT)
                return file.write(data)

        real_save(obj, Interrupted(), *args, **kwargs)

    learn.fit(1)
    monkeypatch.setattr(torch, "save", save_with_ctrl_c)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own: SIGINT raises KeyboardInterrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            learn.save(path)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


KILLED_SAVE = """
import os, signal, sys
from loopkit import Callback
from tests.conftest import make_learner

class Kill:
    def __reduce_ex__(self, protocol):  # pickled inside torch.save, while the temporary file is open
        os.kill(os.getpid(), signal.SIGKILL)

class KilledMidSave(Callback):
    def state_dict(self):
        return {"kill": Kill()}

make_learner(cbs=[KilledMidSave()]).save(sys.argv[1])
"""


@pytest.mark.slow
def test_killed_saves_leave_at_most_one_temporary_file_and_the_next_save_removes_it(tmp_path):
    learn = make_learner()
    learn.fit(1)
    path = learn.save(tmp_path / "ckpt.pt")
    (tmp_path / ".ckpt.pt.k3j9x_2a.tmp").write_bytes(b"")  # left by an older loopkit, which named them at random
    for _ in range(2):
        killed = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(path)], cwd=ROOT, timeout=120)
        assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt.pt.k3j9x_2a.tmp", ".ckpt.pt.tmp", "ckpt.pt"]
    make_learner().load(path)  # the checkpoint itself is intact
    learn.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoints_get_the_mode_of_a_plain_write(tmp_path, umask):
    learn = make_learner()
    learn.fit(1)
    old = os.umask(umask)
    try:
        learn.save(tmp_path / "ckpt.pt")
        learn.save(tmp_path / "ckpt.pt")  # replacing one, too
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ckpt.pt").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~umask


def test_saving_to_a_directory_is_a_clear_error_that_writes_nothing(tmp_path):
    (tmp_path / "models").mkdir()
    learn = make_learner()
    with pytest.raises(ValueError, match=r"cannot save a checkpoint to '.*models': it is a directory"):
        learn.save(tmp_path / "models")
    assert [p.name for p in tmp_path.iterdir()] == ["models"] and not any((tmp_path / "models").iterdir())


@pytest.mark.parametrize("target, match", [
    ("models", r"SaveModel\(path='.*models'\) is a directory; give a file path such as '.*models/best.pt'"),
    ("blocker/sub/best.pt", r"SaveModel\(path='.*best.pt'\) cannot create the folder '.*blocker/sub'"),
])  # fmt: skip
def test_save_model_refuses_a_directory_or_a_folder_it_cannot_make_before_training(tmp_path, target, match):
    (tmp_path / "models").mkdir()
    (tmp_path / "blocker").write_bytes(b"")  # a file where a folder would have to be
    tracer = Tracer()
    learn = make_learner(default_cbs=True, cbs=[SaveModel(path=tmp_path / target), tracer])
    learn.progress_bar.enabled = False
    with pytest.raises(ValueError, match=match):
        learn.fit(2)
    assert "before_epoch" not in tracer.trace
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "models"]
    assert not any((tmp_path / "models").iterdir())


def test_a_fit_resumed_from_save_models_checkpoint_compares_against_the_saved_best(tmp_path):
    scripted = [0.5, 0.9, 0.7, 0.6, 0.4]  # epoch 3 (0.6) is no improvement on the best so far, epoch 0's 0.5

    class Script(Callback):
        order = -10  # after AvgStats wrote the row, before SaveModel reads it

        def after_epoch(self):
            self.avg_stats.history[-1]["valid_loss"] = scripted[self.epoch]

    class Watch(Callback):
        order = 100  # after SaveModel

        def __init__(self, stop_after=None):
            self.seen, self.stop_after = {}, stop_after

        def after_epoch(self):
            written = torch.load(tmp_path / "best.pt", weights_only=True)["epoch"]
            self.seen[self.epoch] = (self.save_model.best, self.save_model.best_epoch, written)
            if self.epoch == self.stop_after:
                raise CancelFit  # the job dies after epoch 2's checkpoints are written

    def run(stop_after=None, resume=None):
        watch = Watch(stop_after)
        save_model = SaveModel(path=tmp_path / "best.pt", every_epoch=True)
        learn = make_learner(default_cbs=True, cbs=[Script(), save_model, watch])
        learn.progress_bar.enabled = False
        learn.fit(5, resume=resume)
        return learn, watch.seen

    _, seen = run(stop_after=2)
    assert seen[2] == (0.5, 0, 0)
    learn, seen = run(resume=tmp_path / "best_epoch2.pt")
    assert seen == {3: (0.5, 0, 0), 4: (0.4, 4, 4)}  # epoch 3 neither improves nor overwrites best.pt
    assert (learn.save_model.best, learn.save_model.best_epoch) == (0.4, 4)


# -- mid-epoch checkpoints, retention, positioning ------------------------------------------


def start_trials(folder: Path, env: dict[str, str], n_trials: int, n_epochs: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.callbacks.resume_job", "trials", str(folder), str(n_epochs),
                             str(n_trials), "15"], cwd=ROOT, env={**os.environ, **env})  # fmt: skip


def check_trials(folder: Path, n_trials: int) -> None:
    straight = torch.load(folder / "straight" / "out.pt", weights_only=True)
    csv_text = (folder / "straight" / "history.csv").read_text()
    for trial in range(n_trials):
        resumed = torch.load(folder / f"trial{trial}" / "out.pt", weights_only=True)
        where = (folder / f"trial{trial}" / "killed_at.txt").read_text().strip()
        for got, want in zip(resumed["params"], straight["params"]):
            assert torch.equal(got, want), where  # bitwise
        assert resumed["history"] == straight["history"], where
        assert resumed["losses"] == straight["losses"] and resumed["hps"] == straight["hps"], where
        assert (folder / f"trial{trial}" / "history.csv").read_text() == csv_text, where


@pytest.mark.slow
def test_killed_at_a_random_batch_a_fresh_process_resumes_bitwise(tmp_path):
    # 20 trials per variant: a child checkpoints every batch and is SIGKILLed at a random point of a
    # random batch; a fresh child resumes from the latest complete checkpoint and must equal the
    # straight run. The three variants run side by side (each is one process at a time).
    variants = {"fit": {}, "one_cycle": {"RESUME_JOB_ONE_CYCLE": "1"}, "accumulation": {"RESUME_JOB_ACCUMULATE": "20"}}
    n_trials = 20
    procs = {name: start_trials(tmp_path / name, env, n_trials, n_epochs=3) for name, env in variants.items()}
    try:
        for name, proc in procs.items():
            assert proc.wait(timeout=900) == 0, name
    finally:
        for proc in procs.values():
            proc.kill()
    for name in variants:
        check_trials(tmp_path / name, n_trials)


class StopAfterBatch(Callback):
    """Stand in for a job killed right after training batch `k` of the fit was checkpointed."""

    order = 95  # after SaveModel's after_batch

    def __init__(self, k: int):
        self.k = k

    def after_batch(self) -> None:
        if self.training and self.train_iter == self.k:
            raise CancelFit


def mid_epoch_learner(folder: Path, accumulate: bool) -> Learner:
    folder.mkdir(exist_ok=True)
    learn = build(str(folder))
    if accumulate:
        learn.add_cbs(GradientAccumulation(20))  # windows of 3 batches of 8: open after 1 or 2 of them
    return learn


def fit_kind(learn: Learner, kind: str, **kwargs: Any) -> None:
    if kind == "one_cycle":
        learn.fit_one_cycle(3, lr_max=0.3, **kwargs)
    else:
        learn.fit(3, **kwargs)


def outcome(learn: Learner, folder: Path) -> tuple[Any, ...]:
    return ([p.detach().clone() for p in learn.model.parameters()], learn.avg_stats.history,
            learn.recorder.losses, learn.recorder.hps, (folder / "history.csv").read_text())  # fmt: skip


@pytest.mark.parametrize("kind, k", [("fit", 1), ("fit", 9), ("fit", 7), ("fit", 14), ("one_cycle", 11),
                                     ("accumulation", 8), ("accumulation", 16)])  # fmt: skip
def test_a_mid_epoch_checkpoint_resumes_bitwise(tmp_path, kind, k):
    # k = 7 and 14 end the training of epochs 0 and 1 (7 batches each): resumed, the phase has no batch left.
    # With accumulation, k = 8 and 16 leave a window open (3 batches of 8 samples close a window of 20).
    accumulate = kind == "accumulation"
    straight = mid_epoch_learner(tmp_path / "a", accumulate)
    fit_kind(straight, kind)
    killed = mid_epoch_learner(tmp_path / "b", accumulate)
    # The job dies a batch after the checkpoint we resume from (for k = 7, after epoch 0's CSV row was written).
    fit_kind(killed, kind, cbs=[SaveModel(path=tmp_path / "b" / "best.pt", every_n_batches=1), StopAfterBatch(k + 1)])
    epoch, batch = divmod(k - 1, 7)
    path = tmp_path / "b" / f"best_epoch{epoch}_batch{batch + 1}.pt"
    state = torch.load(path, weights_only=True)
    assert (state["epoch"], state["batch"], state["train_iter"]) == (epoch, batch + 1, k)
    assert state["callbacks"]["avg_stats"]["train_sums"]["count"] == min(8 * (batch + 1), 50)  # the running sums
    if accumulate:
        assert state["callbacks"]["gradient_accumulation"]["window"]["n_window"] == 8 * ((batch + 1) % 3)
    resumed = mid_epoch_learner(tmp_path / "b", accumulate)
    tracer = Tracer()
    fit_kind(resumed, kind, cbs=[SaveModel(path=tmp_path / "b" / "best.pt", every_n_batches=1), tracer], resume=path)
    assert tracer.trace.count("before_batch") == 3 * 7 - k + (3 - epoch) * 2  # the rest of training, validations
    got, want = outcome(resumed, tmp_path / "b"), outcome(straight, tmp_path / "a")
    assert all(torch.equal(g, w) for g, w in zip(got[0], want[0]))
    assert got[1:] == want[1:]


class CountingDataset(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.loaded.append(i)
        return self.x[i], self.y[i]


def counting_learner(shuffle: bool, cbs: list[Callback] = ()) -> tuple[Learner, CountingDataset]:
    torch.manual_seed(0)
    x, y = torch.randn(40, 4, generator=torch.Generator().manual_seed(1)), torch.arange(40) % 2
    data = CountingDataset(x, y)
    generator = torch.Generator().manual_seed(3) if shuffle else None
    train = DataLoader(data, batch_size=5, shuffle=shuffle, generator=generator)
    learn = Learner(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 2)), (train, None), F.cross_entropy,
                    cbs=list(cbs))  # fmt: skip
    learn.progress_bar.enabled = False
    return learn, data


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_dataloader_is_positioned_without_loading_the_skipped_batches(tmp_path, shuffle):
    straight, _ = counting_learner(shuffle)
    straight.fit(2)
    killed, _ = counting_learner(shuffle, [SaveModel("train_loss", path=tmp_path / "m.pt", every_n_batches=11)])
    killed.fit(2, cbs=[StopAfterBatch(11)])
    resumed, data = counting_learner(shuffle)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot start at a batch" warning, and no other
        resumed.fit(2, resume=tmp_path / "m_epoch1_batch3.pt", cbs=[SaveModel("train_loss", path=tmp_path / "n.pt")])
    assert len(data.loaded) == 40 - 15 and len(set(data.loaded)) == 25  # the 3 batches done were not loaded
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), straight.model.parameters()))
    assert resumed.recorder.losses == straight.recorder.losses


class OffsetLoader:
    """A loader that starts at a batch itself: `iter_from(start)`, as loopkit's own loaders may."""

    def __init__(self, batches: list[Any]):
        self.batches, self.starts = batches, []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def iter_from(self, start: int):
        self.starts.append(start)
        return iter(self.batches[start:])


class PlainIterable:
    """A loader that can only be iterated from the start (no length, no iter_from)."""

    def __init__(self, batches: list[Any]):
        self.batches, self.yielded = batches, 0

    def __iter__(self):
        for batch in self.batches:
            self.yielded += 1
            yield batch


@pytest.mark.parametrize("loader", [OffsetLoader, PlainIterable])
def test_a_loader_starts_itself_or_is_skipped_through_with_a_warning(tmp_path, loader):
    x, y = make_data(24)
    batches = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 24, 4)]

    def learner(cbs=()):
        learn = Learner(tiny_model(), (loader(batches), None), F.cross_entropy, cbs=list(cbs))
        learn.progress_bar.enabled = False
        return learn

    def save():
        return SaveModel("train_loss", path=tmp_path / "m.pt", every_n_batches=8)

    straight = learner()
    straight.fit(2)
    learner([save()]).fit(2, cbs=[StopAfterBatch(8)])
    resumed = learner([save()])
    if loader is OffsetLoader:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            resumed.fit(2, resume=tmp_path / "m_epoch1_batch2.pt")
        assert resumed.train_dl.starts == [2]
    else:
        with pytest.warns(UserWarning, match=r"cannot start at a batch, so loopkit loads and drops the 2 batches"):
            resumed.fit(2, resume=tmp_path / "m_epoch1_batch2.pt")
        assert resumed.train_dl.yielded == 6  # the 2 skipped ones were loaded (and dropped), then the 4 left
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), straight.model.parameters()))
    assert resumed.recorder.losses == straight.recorder.losses


@pytest.mark.parametrize("change, match", [
    ({"batch_size": 4}, r"batch size 5 then, 4 now"),
    ({"n": 45}, r"samples 40 then, 45 now"),
])  # fmt: skip
def test_a_mid_epoch_checkpoint_with_another_loader_is_refused_before_anything_changes(tmp_path, change, match):
    killed, _ = counting_learner(True, [SaveModel("train_loss", path=tmp_path / "m.pt", every_n_batches=3)])
    killed.fit(2, cbs=[StopAfterBatch(3)])
    x, y = torch.randn(change.get("n", 40), 4), torch.arange(change.get("n", 40)) % 2
    tracer = Tracer()
    learn = Learner(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 2)),
                    (DataLoader(TensorDataset(x, y), batch_size=change.get("batch_size", 5), shuffle=True), None),
                    F.cross_entropy, cbs=[tracer])  # fmt: skip
    learn.create_opt()  # fit makes it before reading the checkpoint
    before = snapshot(learn)
    with pytest.raises(ValueError, match=r"cannot resume from '.*m_epoch0_batch3.pt': it was saved mid-epoch.*" + match):
        learn.fit(2, resume=tmp_path / "m_epoch0_batch3.pt")
    assert tracer.trace == []
    assert_same(snapshot(learn), before)


@pytest.mark.parametrize("kwargs, match", [
    ({"every_n_batches": 0}, r"every_n_batches=0\): give an int >= 1"),
    ({"every_n_batches": 2.5}, r"every_n_batches=2.5\)"),
    ({"every_seconds": 0}, r"every_seconds=0\): give a number of seconds > 0"),
    ({"every_seconds": float("nan")}, r"every_seconds=nan\)"),
    ({"every_epoch": True, "keep_last": 0}, r"keep_last=0\)"),
    ({"keep_best": -1}, r"keep_best=-1\)"),
    ({"keep_last": 2}, r"keep_last=2\) keeps periodic checkpoints, and none are asked for"),
])  # fmt: skip
def test_save_model_refuses_bad_periods_and_counts_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SaveModel(**kwargs)


class FakeClock:
    """Seconds that pass only when a callback says so: 0.4 s per training batch."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tick(Callback):
    order = -200  # before SaveModel reads the clock at after_batch

    def __init__(self, clock: FakeClock):
        self.clock = clock

    def after_batch(self) -> None:
        if self.training:
            self.clock.now += 0.4


def test_every_seconds_follows_the_injected_clock_and_names_say_epoch_and_batch(tmp_path):
    clock = FakeClock()
    learn = make_learner(n_train=4, default_cbs=True, cbs=[Tick(clock)])
    learn.progress_bar.enabled = False
    learn.fit(2, cbs=[SaveModel(path=tmp_path / "best.pt", every_seconds=1.0, clock=clock)])
    # 0.4 s a batch: due at the 3rd batch after each save (1.2 s >= 1 s; 0.8 s is not).
    assert sorted(p.name for p in tmp_path.glob("best_*")) == ["best_epoch0_batch3.pt", "best_epoch1_batch2.pt"]
    assert torch.load(tmp_path / "best_epoch1_batch2.pt", weights_only=True)["train_iter"] == 6


def test_retention_keeps_the_last_k_periodic_and_the_best_k_checkpoints(tmp_path):
    scripted = [0.5, 0.9, 0.3, 0.6, 0.4]

    class Script(Callback):
        order = -10  # after AvgStats wrote the row, before SaveModel reads it

        def after_epoch(self):
            self.avg_stats.history[-1]["valid_loss"] = scripted[self.epoch]

    save = SaveModel(path=tmp_path / "best.pt", every_epoch=True, every_n_batches=2, keep_last=3, keep_best=2)
    learn = make_learner(n_train=3, default_cbs=True, cbs=[Script(), save])
    learn.progress_bar.enabled = False
    learn.fit(5)
    names = sorted(p.name for p in tmp_path.iterdir())
    # Periodic saves: train_iter 2, 4, ... (every 2nd batch of 3 per epoch) and each epoch's end; the last 3 stay.
    assert names == ["best.pt", "best_epoch2_valid_loss_0.3.pt", "best_epoch3.pt", "best_epoch4.pt",
                     "best_epoch4_batch2.pt", "best_epoch4_valid_loss_0.4.pt"]  # fmt: skip
    assert save.periodic == ["best_epoch3.pt", "best_epoch4_batch2.pt", "best_epoch4.pt"]
    assert save.top == [(0.3, "best_epoch2_valid_loss_0.3.pt"), (0.4, "best_epoch4_valid_loss_0.4.pt")]
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2


def test_retention_deletes_old_files_only_after_the_new_one_is_complete(tmp_path, monkeypatch):
    save = SaveModel("train_loss", path=tmp_path / "best.pt", every_n_batches=1, keep_last=2)
    learn = make_learner(n_train=4, default_cbs=True, cbs=[save])
    learn.progress_bar.enabled = False
    write = checkpoint_module._write_atomically
    calls = []

    def failing_write(state, path):
        calls.append(path.name)
        if len(calls) == 4:  # the 4th periodic save dies mid-write
            raise OSError("disk full")
        write(state, path)

    monkeypatch.setattr(checkpoint_module, "_write_atomically", failing_write)
    with pytest.raises(OSError, match="disk full"):
        learn.fit(1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_epoch0_batch2.pt", "best_epoch0_batch3.pt"]


def test_a_resumed_fit_continues_the_retention_lists(tmp_path):
    def save():
        return SaveModel("train_loss", path=tmp_path / "best.pt", every_n_batches=1, keep_last=2)

    learn = make_learner(n_train=4, default_cbs=True, cbs=[save(), StopAfterBatch(6)])
    learn.progress_bar.enabled = False
    learn.fit(3)
    resumed = make_learner(n_train=4, default_cbs=True, cbs=[save()])
    resumed.progress_bar.enabled = False
    resumed.fit(3, resume=tmp_path / "best_epoch1_batch2.pt")
    assert sorted(p.name for p in tmp_path.glob("best_*")) == ["best_epoch2_batch3.pt", "best_epoch2_batch4.pt"]


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_tensor_loader_starts_the_interrupted_epoch_itself(tmp_path, shuffle):
    x, y = torch.randn(40, 4, generator=torch.Generator().manual_seed(1)), torch.arange(40) % 2

    def learner(cbs=()):
        torch.manual_seed(0)
        train = TensorLoader((x, y), bs=5, shuffle=shuffle, seed=3)
        learn = Learner(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 2)), (train, None),
                        F.cross_entropy, cbs=list(cbs))  # fmt: skip
        learn.progress_bar.enabled = False
        return learn

    straight = learner()
    straight.fit(2)
    learner([SaveModel("train_loss", path=tmp_path / "m.pt", every_n_batches=11)]).fit(2, cbs=[StopAfterBatch(11)])
    resumed = learner([SaveModel("train_loss", path=tmp_path / "n.pt")])
    starts = []
    real = TensorLoader.iter_from
    resumed.train_dl.iter_from = lambda start: starts.append(start) or real(resumed.train_dl, start)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # positioned by the loader itself: no "cannot start at a batch" warning
        resumed.fit(2, resume=tmp_path / "m_epoch1_batch3.pt")
    assert starts == [3]
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), straight.model.parameters()))
    assert resumed.recorder.losses == straight.recorder.losses
