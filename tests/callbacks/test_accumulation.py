"""GradientAccumulation: one step per window equals one step on the window's samples."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

from loopkit import Callback, CancelBackward, CancelBatch, CancelEpoch, CancelStep, Learner
from loopkit.callbacks import AvgStats, GradientAccumulation, Recorder
from tests.conftest import batches_of, make_data, tiny_model

OPTIMIZERS = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=0.1),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr, weight_decay=0.01),
}


def expected_windows(sizes: list[int], n_samples: int) -> list[list[int]]:
    """Group micro-batch sizes as the contract says: close a window at >= n_samples, and at the end."""
    windows: list[list[int]] = [[]]
    for size in sizes:
        windows[-1].append(size)
        if sum(windows[-1]) >= n_samples:
            windows.append([])
    return [w for w in windows if w]


class Unsized:
    """An iterable of batches without a length, like a streaming loader."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator:
        return iter(self.batches)


class CountSteps(Callback):
    """Count `opt.step()` calls with a torch step hook, independently of the callback under test."""

    def __init__(self) -> None:
        self.n_steps = 0
        self._hook = None

    def before_fit(self) -> None:
        self._hook = self.opt.register_step_post_hook(lambda *args: self._count())

    def _count(self) -> None:
        self.n_steps += 1

    def after_fit(self) -> None:
        self._hook.remove()


class GradAfterTrain(Callback):
    """Record, after each training phase, whether any parameter still holds a gradient."""

    order = 1000

    def __init__(self) -> None:
        self.leftover: list[bool] = []

    def after_train(self) -> None:
        self.leftover.append(any(p.grad is not None for p in self.model.parameters()))


def float64_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = make_data(n, seed)
    return x.double(), y


def fit_params(batches, opt: str, n_epochs: int, cbs=(), sized: bool = True) -> tuple[list[torch.Tensor], Learner]:
    train = batches if sized else Unsized(batches)
    learn = Learner(tiny_model().double(), (train, None), F.cross_entropy, opt_func=OPTIMIZERS[opt], lr=0.1,
                    default_cbs=False, cbs=list(cbs))  # fmt: skip
    learn.fit(n_epochs)
    return [p.detach().clone() for p in learn.model.parameters()], learn


@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=10),
    n_samples=st.integers(1, 30),
    opt=st.sampled_from(sorted(OPTIMIZERS)),
    n_epochs=st.integers(1, 2),
    sized=st.booleans(),
)
@example(sizes=[4, 4, 3], n_samples=8, opt="sgd", n_epochs=2, sized=True)  # a short last window
@example(sizes=[5, 5, 5], n_samples=8, opt="adam", n_epochs=1, sized=False)  # windows overshoot n_samples
def test_accumulated_update_equals_one_step_per_window(sizes, n_samples, opt, n_epochs, sized):
    x, y = float64_data(sum(sizes), seed=len(sizes))
    counter, grads = CountSteps(), GradAfterTrain()
    got, _ = fit_params(batches_of(x, y, sizes), opt, n_epochs, [GradientAccumulation(n_samples), counter, grads], sized)
    windows = [sum(w) for w in expected_windows(sizes, n_samples)]
    want, _ = fit_params(batches_of(x, y, windows), opt, n_epochs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    assert counter.n_steps == len(windows) * n_epochs
    assert grads.leftover == [False] * n_epochs


@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=10), n_samples=st.integers(1, 30))
def test_will_step_marks_the_last_micro_batch_of_each_window(sizes, n_samples):
    class ReadWillStep(Callback):
        def before_fit(self) -> None:
            self.flags: list[bool] = []

        def after_batch(self) -> None:
            self.flags.append(self.learn.gradient_accumulation.will_step)

    x, y = float64_data(sum(sizes))
    reader = ReadWillStep()
    _, learn = fit_params(batches_of(x, y, sizes), "sgd", 1, [GradientAccumulation(n_samples), reader])
    want = [i == len(w) - 1 for w in expected_windows(sizes, n_samples) for i in range(len(w))]
    assert reader.flags == want
    assert learn.gradient_accumulation.n_steps == sum(want)


@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=8), n_samples=st.integers(1, 20))
@example(sizes=[8, 1], n_samples=5)
def test_avg_stats_and_recorder_report_the_true_per_sample_loss(sizes, n_samples):
    x, y = make_data(sum(sizes), seed=len(sizes))
    stats, recorder = AvgStats(), Recorder()
    # lr=0 keeps the model fixed, so the true losses are known in closed form.
    learn = Learner(tiny_model(), (batches_of(x, y, sizes), None), F.cross_entropy, lr=0.0, default_cbs=False,
                    cbs=[GradientAccumulation(n_samples), stats, recorder])  # fmt: skip
    learn.fit(1)
    with torch.no_grad():
        pred = learn.model(x)
        assert stats.train.loss == pytest.approx(F.cross_entropy(pred, y).item(), rel=1e-5)
        per_batch = [F.cross_entropy(p, t).item() for p, t in zip(pred.split(sizes), y.split(sizes))]
    assert recorder.losses == pytest.approx(per_batch, rel=1e-5)


def cancel_at(event: str, at: int, error: type[Exception], order: int = 0) -> Callback:
    """Build a one-event callback class (event methods must be defined on the class)."""

    def method(self: Callback) -> None:
        if self.train_iter == at:
            raise error

    cls = type(f"Cancel{event.title().replace('_', '')}", (Callback,), {event: method, "order": order})
    return cls()


@pytest.mark.parametrize("order", [-100, 0], ids=["before_accumulation", "after_accumulation"])
def test_cancelled_step_on_a_windows_last_micro_batch_drops_that_window(order):
    sizes, n_samples = [3, 3, 3, 3, 3, 3], 6
    x, y = float64_data(sum(sizes))
    # Micro-batch 3 closes the second window: its step is cancelled, its gradients dropped.
    got, learn = fit_params(batches_of(x, y, sizes), "sgd", 1,
                            [GradientAccumulation(n_samples), cancel_at("before_step", 3, CancelStep, order)])  # fmt: skip
    kept = torch.cat([torch.arange(0, 6), torch.arange(12, 18)])
    want, _ = fit_params(batches_of(x[kept], y[kept], [6, 6]), "sgd", 1)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    assert learn.gradient_accumulation.n_steps == 2


@pytest.mark.parametrize("event, error", [("after_loss", CancelBatch), ("before_backward", CancelBackward)])
def test_micro_batch_cancelled_before_backward_adds_nothing_to_its_window(event, error):
    sizes, n_samples = [2, 3, 4, 2, 5], 6
    x, y = float64_data(sum(sizes))
    got, _ = fit_params(batches_of(x, y, sizes), "adam", 1,
                        [GradientAccumulation(n_samples), cancel_at(event, 1, error, order=100)])  # fmt: skip
    # As if micro-batch 1 (3 samples) were not in the data: windows [2, 4] and [2, 5].
    kept = torch.cat([torch.arange(0, 2), torch.arange(5, 16)])
    want, _ = fit_params(batches_of(x[kept], y[kept], [6, 7]), "adam", 1)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_open_window_is_dropped_when_the_phases_last_micro_batch_skips_its_step():
    sizes, n_samples = [3, 3, 3, 3], 6
    x, y = float64_data(sum(sizes))
    grads = GradAfterTrain()
    # CancelBatch after the backward of the last micro-batch: the window [3, 3] never steps.
    got, learn = fit_params(batches_of(x, y, sizes), "sgd", 2,
                            [GradientAccumulation(n_samples), cancel_at("after_backward", 3, CancelBatch), grads])  # fmt: skip
    assert grads.leftover == [False, False]
    assert learn.gradient_accumulation.n_steps == 3  # two in the first epoch, two in the second minus one
    # The first epoch's last window was dropped; everything else stepped.
    want_model = tiny_model().double()
    opt = OPTIMIZERS["sgd"](want_model.parameters(), 0.1)
    for xb, yb in [(x[:6], y[:6]), (x[:6], y[:6]), (x[6:], y[6:])]:
        F.cross_entropy(want_model(xb), yb).backward()
        opt.step()
        opt.zero_grad()
    for g, w in zip(got, want_model.parameters()):
        torch.testing.assert_close(g, w.detach(), rtol=1e-9, atol=1e-12)


def test_gradients_are_dropped_when_the_epoch_is_cancelled_mid_window():
    x, y = float64_data(12)

    class GradAfterEpoch(Callback):
        order = 1000

        def before_fit(self) -> None:
            self.grads: list[list] = []

        def after_epoch(self) -> None:
            self.grads.append([p.grad for p in self.model.parameters()])

    look = GradAfterEpoch()
    fit_params(batches_of(x, y, [3, 3, 3, 3]), "sgd", 2,
               [GradientAccumulation(12), cancel_at("after_backward", 1, CancelEpoch), look])  # fmt: skip
    assert look.grads == [[None, None], [None, None]]


def test_n_samples_must_be_a_positive_int():
    with pytest.raises(ValueError, match="int >= 1, got 0"):
        GradientAccumulation(0)
    with pytest.raises(ValueError, match="got 4.5"):
        GradientAccumulation(4.5)  # type: ignore[arg-type]
