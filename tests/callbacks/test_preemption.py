"""Preemption: a signal ends the fit after the batch with a checkpoint that resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loopkit import Callback
from loopkit.callbacks import Preemption
from tests.conftest import Tracer, make_learner

ROOT = Path(__file__).resolve().parents[2]


def job(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.callbacks.resume_job", *args], cwd=ROOT,
                            env=dict(os.environ), **kwargs)  # fmt: skip


@pytest.mark.slow
def test_sigterm_to_a_child_mid_epoch_saves_and_a_fresh_process_resumes_bitwise(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = job("straight", str(tmp_path / "a" / "out.pt"), "4")
    # Training batch 10 of 28 (epoch 1, batch 3): the child says "ready" after the loss and waits on stdin.
    child = job("preempt", str(tmp_path / "b" / "first.pt"), "4", "10", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True)  # fmt: skip
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    child.stdin.write("go\n")
    child.stdin.close()
    assert child.wait(timeout=120) == 0  # the fit ended normally, and the learner was usable after
    state = torch.load(tmp_path / "b" / "preempted.pt", weights_only=True)
    assert (state["epoch"], state["batch"], state["train_iter"]) == (1, 4, 11)  # batch 10 finished first
    assert straight.wait(timeout=120) == 0
    resumed = job("resume", str(tmp_path / "b" / "out.pt"), "4", str(tmp_path / "b" / "preempted.pt"))
    assert resumed.wait(timeout=120) == 0
    want = torch.load(tmp_path / "a" / "out.pt", weights_only=True)
    got = torch.load(tmp_path / "b" / "out.pt", weights_only=True)
    assert all(torch.equal(g, w) for g, w in zip(got["params"], want["params"]))
    assert got["history"] == want["history"] and got["losses"] == want["losses"] and got["hps"] == want["hps"]
    assert (tmp_path / "b" / "history.csv").read_text() == (tmp_path / "a" / "history.csv").read_text()


class SignalAt(Callback):
    """Send `sig` to this process in training batch `k` of the fit, after its loss."""

    def __init__(self, sig: int, k: int, event: str = "after_loss"):
        self.sig, self.k, self.event = sig, k, event
        self.steps_after: int | None = None

    def after_loss(self) -> None:
        if self.training and self.train_iter == self.k:
            os.kill(os.getpid(), self.sig)

    def after_step(self) -> None:
        if self.training and self.train_iter == self.k:
            self.steps_after = self.train_iter  # the signalled batch still steps


def test_sigusr1_finishes_the_batch_saves_cancels_and_puts_the_handler_back(tmp_path):
    seen = []

    def previous(signum, frame):
        seen.append(signum)

    old = signal.signal(signal.SIGUSR1, previous)
    try:
        tracer, sender = Tracer(), SignalAt(signal.SIGUSR1, 4)
        preemption = Preemption(path=tmp_path / "pre.pt", signals=["SIGUSR1", "SIGTERM"])
        learn = make_learner(n_train=3, default_cbs=True, cbs=[preemption, sender, tracer])
        learn.progress_bar.enabled = False
        learn.fit(3)
        assert preemption.received == signal.SIGUSR1 and preemption.saved == tmp_path / "pre.pt"
        assert sender.steps_after == 4
        # The batch ran to its end: its step, then Preemption's after_batch (order 100, before the tracer's) cancels.
        assert tracer.trace[-4:] == ["before_step", "after_step", "after_cancel_fit", "after_fit"]
        state = torch.load(tmp_path / "pre.pt", weights_only=True)
        assert (state["epoch"], state["batch"], state["train_iter"]) == (1, 2, 5)
        assert signal.getsignal(signal.SIGUSR1) is previous and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        os.kill(os.getpid(), signal.SIGUSR1)
        assert seen == [signal.SIGUSR1]  # the user's handler is back in charge
        learn.fit(1)  # the learner is usable, and without a signal Preemption lets the fit run
        assert learn.train_iter == 3 and preemption.received is None
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_a_signal_during_validation_saves_at_the_epochs_end(tmp_path):
    class SignalInValidation(Callback):
        def after_loss(self) -> None:
            if not self.training and self.epoch == 0 and self.iter == 0:
                os.kill(os.getpid(), signal.SIGTERM)

    preemption = Preemption(path=tmp_path / "pre.pt")
    learn = make_learner(default_cbs=True, cbs=[preemption, SignalInValidation()])
    learn.progress_bar.enabled = False
    learn.fit(3)
    state = torch.load(tmp_path / "pre.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) == (0, 0) and len(learn.avg_stats.history) == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_evaluations_install_no_handler(tmp_path):
    class Peek(Callback):
        def after_batch(self) -> None:
            self.handler = signal.getsignal(signal.SIGTERM)

    peek = Peek()
    learn = make_learner(default_cbs=True, cbs=[Preemption(path=tmp_path / "pre.pt"), peek])
    learn.validate()
    assert peek.handler is signal.SIG_DFL and not (tmp_path / "pre.pt").exists()


@pytest.mark.parametrize("signals, error, match", [
    ("SIGFOO", ValueError, r"'SIGFOO' is not a signal on this platform; use one of .*SIGTERM"),
    (["SIGTERM", "NOPE"], ValueError, r"'NOPE' is not a signal"),
    ("SIGKILL", ValueError, r"SIGKILL cannot be caught"),
    (99999, ValueError, r"99999 is not a signal number"),
    ((), ValueError, r"handles nothing"),
    ([1.5], TypeError, r"a signal is a name such as 'SIGTERM'"),
])  # fmt: skip
def test_a_signal_that_does_not_exist_is_an_error_at_construction(signals, error, match):
    with pytest.raises(error, match=match):
        Preemption(signals=signals)


def test_signal_names_without_sig_and_numbers_are_accepted():
    assert Preemption(signals=("term", signal.SIGUSR1, int(signal.SIGUSR2))).signals == (
        signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
