"""ProgressBar: one table row per epoch, quiet when disabled, bars closed on errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loopkit import Learner
from loopkit.callbacks import ProgressBar
from tests.conftest import Tracer, accuracy, batches_of, make_data, tiny_model


def make(**kwargs) -> Learner:
    x, y = make_data(24)
    dls = (batches_of(x[:16], y[:16], [4] * 4), batches_of(x[16:], y[16:], [8]))
    kwargs.setdefault("metrics", [accuracy])
    return Learner(tiny_model(), dls, F.cross_entropy, **kwargs)


def test_table_has_a_header_and_a_row_per_epoch(capsys):
    learn = make()
    learn.fit(3)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert [line.split()[0] for line in lines[1:]] == ["0", "1", "2"]
    row = learn.avg_stats.history[-1]
    assert lines[-1].split()[1:4] == [f"{row['train_loss']:.6f}", f"{row['valid_loss']:.6f}", f"{row['accuracy']:.6f}"]


def test_disabled_bar_prints_nothing(capsys):
    learn = make()
    learn.progress_bar.enabled = False
    learn.fit(2)
    assert capsys.readouterr().out == ""
    make(default_cbs=False, metrics=None, cbs=[ProgressBar(enabled=False)]).fit(1)
    assert capsys.readouterr().out == ""


def test_write_goes_where_asked():
    lines: list[str] = []
    learn = make()
    learn.remove_cbs(ProgressBar).add_cbs(ProgressBar(write=lines.append))
    learn.fit(2)
    assert len(lines) == 3


def test_bars_in_a_terminal_are_closed_when_the_fit_fails(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    learn = make(cbs=[Tracer("after_batch", at=5, error=KeyboardInterrupt)])
    with pytest.raises(KeyboardInterrupt):
        learn.fit(3)
    assert learn.progress_bar._pbar is None and learn.progress_bar._mbar is None  # closed in after_fit
    learn.fit(1)
    assert "epoch" in capsys.readouterr().out


def test_an_evaluation_shows_a_batch_bar_alone_and_closes_it(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    made = []
    from loopkit.callbacks import progress

    real = progress.progress_bar

    def spy(*args, **kwargs):
        made.append(kwargs.get("parent"))
        return real(*args, **kwargs)

    monkeypatch.setattr(progress, "progress_bar", spy)
    learn = make()
    learn.validate()
    learn.get_preds()
    assert made == [None, None]  # one bar per evaluation, with no epoch bar around it
    assert learn.progress_bar._pbar is None and learn.progress_bar._mbar is None
    assert "epoch" not in capsys.readouterr().out  # no epoch table row
    with pytest.raises(RuntimeError):
        learn.predict(torch.randn(2, 9))  # the wrong width: the bar is closed on the error too
    assert learn.progress_bar._pbar is None


def test_lr_find_shows_the_sweep_and_its_suggestion_not_an_epoch_table_of_nan():
    lines: list[str] = []
    learn = make()  # 4 training batches an epoch: the sweep of 10 spans 3 epochs
    learn.remove_cbs(ProgressBar).add_cbs(ProgressBar(write=lines.append))
    found = learn.lr_find(num_it=10)
    lrs = found.lrs
    assert lines == [f"lr_find: 10 batches, lr {lrs[0]:.2e} to {lrs[-1]:.2e}; suggested lr {found.lr_steep:.2e} "
                     f"(steepest fall), lr_min {found.lr_min:.2e} (lowest loss / 10)"]  # fmt: skip
    learn.fit(1)  # a fit after it has its table again
    assert lines[1].split()[0] == "epoch" and len(lines) == 3


def test_lr_find_in_a_terminal_draws_one_bar_for_the_sweep(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    learn = make()
    found = learn.lr_find(num_it=10)
    out = capsys.readouterr().out
    assert "nan" not in out and "train_loss" not in out and f"suggested lr {found.lr_steep:.2e}" in out
    assert learn.progress_bar._pbar is None and learn.progress_bar._mbar is None  # closed in after_fit
