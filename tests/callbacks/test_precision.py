"""MixedPrecision and GradientClip: autocast where it belongs, loss scaling, skipped steps, clipped norms.

float16 runs on the CPU too (slowly, with a warning), so the scaler's logic is
tested here on every machine; the same tests run on CUDA when there is one.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from loopkit import (
    Callback,
    CancelBatch,
    CancelEpoch,
    CancelFit,
    CancelTrain,
    CancelValidate,
    DataLoaders,
    Learner,
    digits,
)
from loopkit.callbacks import GradientAccumulation, GradientClip, MixedPrecision
from tests.conftest import accuracy, batches_of, make_data, tiny_model

DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])]  # fmt: skip
fp16_on_cpu = pytest.mark.filterwarnings("ignore:MixedPrecision.torch.float16. on CPU is slow")


@pytest.fixture(autouse=True)
def no_autocast_leaks():
    """Fail a test that leaves autocast on, and switch it off so later tests are not affected."""
    yield
    leaked = torch.is_autocast_enabled("cpu")
    torch.set_autocast_enabled("cpu", False)
    assert not leaked, "autocast is still on after the fit"


def quiet(learn: Learner) -> Learner:
    learn.progress_bar.enabled = False
    return learn


def test_bf16_trains_the_digits_mlp_to_its_accuracy_floor_on_cpu():
    torch.manual_seed(0)
    data = digits()
    dls = DataLoaders.from_tensors(data.train, data.valid, bs=64, seed=0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 10))

    class Dtypes(Callback):
        order = 1000

        def before_fit(self) -> None:
            self.seen: set[tuple[torch.dtype, torch.dtype]] = set()

        def after_loss(self) -> None:
            self.seen.add((self.pred.dtype, self.loss.dtype))

    dtypes = Dtypes()
    learn = quiet(Learner(model, dls, F.cross_entropy, opt_func=partial(torch.optim.SGD, momentum=0.9), lr=0.05,
                          metrics=[accuracy], cbs=[MixedPrecision(), dtypes]))  # fmt: skip
    learn.fit(5)
    assert dtypes.seen == {(torch.bfloat16, torch.float32)}  # forward in bfloat16, loss in float32
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())
    assert learn.avg_stats.valid.metrics["accuracy"] >= 0.95  # the digits recipe's floor


class AutocastProbe(Callback):
    """Record, at chosen events, whether CPU autocast is on."""

    order = 1000

    def before_fit(self) -> None:
        self.on: dict[str, set[bool]] = {}

    def _probe(self, event: str) -> None:
        self.on.setdefault(event, set()).add(torch.is_autocast_enabled("cpu"))

    def after_pred(self) -> None:
        self._probe("after_pred")

    def after_loss(self) -> None:
        self._probe("after_loss")

    def before_backward(self) -> None:
        self._probe("before_backward")

    def before_step(self) -> None:
        self._probe("before_step")

    def after_batch(self) -> None:
        self._probe("after_batch")

    def after_train(self) -> None:
        self._probe("after_train")

    def after_validate(self) -> None:
        self._probe("after_validate")

    def after_epoch(self) -> None:
        self._probe("after_epoch")


def test_autocast_covers_the_forward_pass_and_loss_only():
    probe = AutocastProbe()
    learn = Learner(tiny_model(), ([make_data(8)], [make_data(4)]), F.cross_entropy, default_cbs=False,
                    cbs=[MixedPrecision(), probe])  # fmt: skip
    learn.fit(2)
    assert probe.on == {"after_pred": {True}, "after_loss": {False}, "before_backward": {False}, "before_step": {False},
                        "after_batch": {False}, "after_train": {False}, "after_validate": {False},
                        "after_epoch": {False}}  # fmt: skip


ENDINGS = [(error, True) for error in (CancelBatch, CancelTrain, CancelEpoch, CancelFit, RuntimeError)] + [
    (error, False) for error in (CancelBatch, CancelValidate, CancelEpoch, CancelFit, RuntimeError)]  # fmt: skip


@pytest.mark.parametrize("error, training", ENDINGS, ids=lambda v: v.__name__ if isinstance(v, type) else "train" if v else "valid")
def test_autocast_is_left_whatever_ends_the_batch(error, training):
    class RaiseAfterPred(Callback):
        def after_pred(self) -> None:
            if self.training == training and self.iter == 0 and self.epoch == 0:
                raise error

    probe = AutocastProbe()
    x, y = make_data(16)
    learn = Learner(tiny_model(), (batches_of(x[:8], y[:8], [4, 4]), batches_of(x, y, [8, 8])), F.cross_entropy,
                    default_cbs=False, cbs=[MixedPrecision(), RaiseAfterPred(), probe])  # fmt: skip
    if error is RuntimeError:
        with pytest.raises(RuntimeError):
            learn.fit(2)
    else:
        learn.fit(2)
    assert all(probe.on.get(event, {False}) == {False} for event in ("after_batch", "after_train", "after_validate",
                                                                    "after_epoch"))  # fmt: skip
    # the fixture checks that autocast is off once the fit is over


class InjectInf(Callback):
    """Put an inf in the first gradient after the backward of training batch `at` (over the fit)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def after_backward(self) -> None:
        if self.train_iter == self.at:
            next(self.model.parameters()).grad.view(-1)[0] = math.inf


class Snapshots(Callback):
    """Record the parameters and momentum buffers before and after every training batch."""

    order = 1000

    def before_fit(self) -> None:
        self.rows: list[tuple[list[torch.Tensor], list[torch.Tensor], bool]] = []

    def _state(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.model.parameters()] + [
            s["momentum_buffer"].clone() for s in self.opt.state.values() if s.get("momentum_buffer") is not None
        ]

    def before_batch(self) -> None:
        self._before = self._state()

    def after_batch(self) -> None:
        if self.training:
            grads_empty = all(p.grad is None for p in self.model.parameters())
            self.rows.append((self._before, self._state(), grads_empty))


@fp16_on_cpu
@pytest.mark.parametrize("device", DEVICES)
def test_fp16_skips_the_step_on_an_inf_gradient_and_backs_off_the_scale(device):
    x, y = make_data(12)
    snapshots, steps = Snapshots(), []
    sgd = partial(torch.optim.SGD, momentum=0.9)
    learn = Learner(tiny_model(), (batches_of(x, y, [4, 4, 4]), None), F.cross_entropy, opt_func=sgd, lr=0.1,
                    default_cbs=False, device=device, cbs=[MixedPrecision(torch.float16), InjectInf(at=1), snapshots])  # fmt: skip
    learn.opt = sgd(learn.model.parameters(), lr=0.1)
    learn.opt.register_step_post_hook(lambda *args: steps.append(learn.train_iter))
    learn.fit(1)
    assert steps == [0, 2]  # opt.step() is not called for batch 1
    changed = [any(not torch.equal(a, b) for a, b in zip(before, after)) for before, after, _ in snapshots.rows]
    assert changed == [True, False, True]  # batch 1's step is skipped: weights and momentum untouched
    assert all(empty for _, _, empty in snapshots.rows)  # the inf gradient was zeroed, not kept
    assert learn.mixed_precision.n_skipped == 1
    assert learn.mixed_precision.scaler.get_scale() == 2.0**16 * 0.5  # the scaler's own back-off
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())


def test_fp16_on_cpu_warns_that_it_is_slow():
    learn = Learner(tiny_model(), ([make_data(4)], None), F.cross_entropy, default_cbs=False,
                    cbs=[MixedPrecision("fp16")])  # fmt: skip
    with pytest.warns(UserWarning, match=r"float16\) on CPU is slow.*use MixedPrecision\(torch.bfloat16\)"):
        learn.fit(1)


def reference_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device_type: str) -> list[torch.Tensor]:
    """The gradient of the batch loss under float16 autocast, without any scaling."""
    model.zero_grad()
    with torch.autocast(device_type, dtype=torch.float16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return grads


class SeenByOptimizer(Callback):
    """Record the gradients the optimizer is about to use, and the loss at two points."""

    order = 100

    def before_fit(self) -> None:
        self.grads: list[list[torch.Tensor]] = []
        self.loss_ratio: list[float] = []

    def after_loss(self) -> None:
        self._true_loss = self.loss.detach()

    def before_backward(self) -> None:
        self.loss_ratio.append((self.loss.detach() / self._true_loss).item())

    def before_step(self) -> None:
        self.grads.append([p.grad.clone() for p in self.model.parameters()])


@fp16_on_cpu
@pytest.mark.parametrize("device", DEVICES)
def test_fp16_scales_the_loss_and_the_optimizer_sees_unscaled_gradients(device):
    x, y = make_data(16)
    seen = SeenByOptimizer()
    learn = Learner(tiny_model(), ([(x, y)], None), F.cross_entropy, lr=0.0, default_cbs=False, device=device,
                    cbs=[MixedPrecision(torch.float16), seen])  # fmt: skip
    learn.fit(1)
    assert seen.loss_ratio == [pytest.approx(2.0**16)]
    want = reference_grads(learn.model, x.to(device), y.to(device), device)
    for got, ref in zip(seen.grads[0], want):
        torch.testing.assert_close(got, ref, rtol=1e-2, atol=1e-3)


@fp16_on_cpu
@pytest.mark.parametrize("device", DEVICES)
def test_fp16_with_accumulation_unscales_once_per_window(device):
    x, y = make_data(12)
    seen = SeenByOptimizer()
    learn = Learner(tiny_model(), (batches_of(x, y, [4, 4, 4]), None), F.cross_entropy, lr=0.0, default_cbs=False,
                    device=device, cbs=[MixedPrecision(torch.float16), GradientAccumulation(8), seen])  # fmt: skip
    learn.fit(1)
    assert len(seen.grads) == 2  # the windows [4, 4] and [4]
    x, y = x.to(device), y.to(device)
    for got, window in zip(seen.grads, (slice(0, 8), slice(8, 12))):
        for g, ref in zip(got, reference_grads(learn.model, x[window], y[window], device)):
            torch.testing.assert_close(g, ref, rtol=1e-2, atol=1e-3)


@fp16_on_cpu
def test_scaler_state_is_saved_in_checkpoints(tmp_path):
    x, y = make_data(8)

    def make() -> Learner:
        return Learner(tiny_model(), ([(x, y)], None), F.cross_entropy, default_cbs=False,
                       cbs=[MixedPrecision(torch.float16), InjectInf(at=0)])  # fmt: skip

    learn = make()
    learn.fit(1)  # one skipped step: the scale backs off to 2**15
    path = learn.save(tmp_path / "amp.pt")
    other = make().load(path)
    other.remove_cbs(InjectInf)
    other.fit(1)  # the loaded scale is used, and this clean step keeps it
    assert other.mixed_precision.scaler.get_scale() == 2.0**15


def test_bad_arguments_say_what_to_pass():
    with pytest.raises(ValueError, match="bfloat16 or torch.float16"):
        MixedPrecision(torch.float32)
    with pytest.raises(ValueError, match="bfloat16 or torch.float16"):
        MixedPrecision("fp8")
    assert MixedPrecision("bf16").dtype == torch.bfloat16 and MixedPrecision("fp16").dtype == torch.float16
    with pytest.raises(ValueError, match="max_norm must be a finite number > 0, got 0"):
        GradientClip(0)
    with pytest.raises(ValueError, match="norm_type must be > 0"):
        GradientClip(1.0, norm_type=0)
    learn = Learner(tiny_model().half(), ([make_data(4)], None), F.cross_entropy, default_cbs=False,
                    cbs=[MixedPrecision(torch.float16)])  # fmt: skip
    with pytest.raises(ValueError, match=r"needs float32 parameters.*drop model.half\(\)"):
        learn.fit(1)


class NormSeenByOptimizer(Callback):
    """Record the total gradient norm right before `opt.step()`."""

    order = 100

    def __init__(self, norm_type: float) -> None:
        self.norm_type = norm_type
        self.norms: list[float] = []

    def before_step(self) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        self.norms.append(torch.nn.utils.get_total_norm(grads, self.norm_type).item())


@given(
    max_norm=st.floats(1e-3, 10.0),
    scale=st.floats(0.1, 100.0),
    norm_type=st.sampled_from([1.0, 2.0, math.inf]),
    sizes=st.lists(st.integers(1, 8), min_size=1, max_size=5),
)
def test_the_optimizer_never_sees_a_gradient_norm_above_max_norm(max_norm, scale, norm_type, sizes):
    x, y = make_data(sum(sizes), seed=len(sizes))
    seen = NormSeenByOptimizer(norm_type)
    clip = GradientClip(max_norm, norm_type)
    learn = Learner(tiny_model(), (batches_of(x * scale, y, sizes), None), F.cross_entropy, lr=0.1,
                    default_cbs=False, cbs=[clip, seen])  # fmt: skip
    learn.fit(2)
    assert len(seen.norms) == 2 * len(sizes)
    assert max(seen.norms) <= max_norm * (1 + 1e-5)
    # the published norm is the one before clipping, and clipping only shrinks
    assert clip.grad_norm is not None and clip.grad_norm.item() >= seen.norms[-1] * (1 - 1e-5)


def test_clip_acts_once_per_window_on_the_whole_accumulated_gradient():
    sizes, n_samples, max_norm = [3, 3, 3, 3, 2], 6, 0.05
    x, y = make_data(sum(sizes))
    x, sgd = x.double(), partial(torch.optim.SGD, momentum=0.9)

    def fit(batches, cbs) -> list[torch.Tensor]:
        learn = Learner(tiny_model().double(), (batches, None), F.cross_entropy, opt_func=sgd, lr=0.5,
                        default_cbs=False, cbs=cbs)  # fmt: skip
        learn.fit(2)
        return list(learn.model.parameters())

    seen = NormSeenByOptimizer(2.0)
    got = fit(batches_of(x, y, sizes), [GradientClip(max_norm), GradientAccumulation(n_samples), seen])
    want = fit(batches_of(x, y, [6, 6, 2]), [GradientClip(max_norm)])  # the windows as plain batches
    assert seen.norms == pytest.approx([max_norm] * 6, rel=1e-5)  # every window was clipped
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


@fp16_on_cpu
def test_clip_sees_the_unscaled_gradient_under_fp16():
    x, y = make_data(16)
    clip, seen = GradientClip(1e-3), NormSeenByOptimizer(2.0)
    learn = Learner(tiny_model(), ([(x, y)], None), F.cross_entropy, lr=0.0, default_cbs=False,
                    cbs=[MixedPrecision(torch.float16), clip, seen])  # fmt: skip
    learn.fit(1)
    true_norm = torch.nn.utils.get_total_norm(reference_grads(learn.model, x, y, "cpu")).item()
    assert clip.grad_norm.item() == pytest.approx(true_norm, rel=1e-2)
    assert seen.norms == [pytest.approx(1e-3, rel=1e-3)]
