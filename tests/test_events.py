"""The event grammar: which events fire, in which order, for every fit shape and cancel point."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from loopkit import (
    EVENTS,
    CancelBackward,
    CancelBatch,
    CancelEpoch,
    CancelFit,
    CancelStep,
    CancelTrain,
    CancelValidate,
)
from loopkit.events import CANCELS
from tests.conftest import Tracer, make_learner

# The contract's learner state (docs/state.md), which an evaluation leaves as it found it.
STATE = ("n_epochs", "start_epoch", "epoch", "training", "dl", "iter", "n_iter", "train_iter", "pct_train",
         "batch", "xb", "yb", "pred", "loss", "evaluating", "train_dl", "valid_dl", "model", "opt")  # fmt: skip

BATCH_TRAIN = ["before_batch", "after_pred", "after_loss", "before_backward", "after_backward",
               "before_step", "after_step", "after_batch"]  # fmt: skip
BATCH_VALID = ["before_batch", "after_pred", "after_loss", "after_batch"]


def full_trace(n_epochs: int, n_train: int, n_valid: int | None) -> list[str]:
    """The trace of an uncancelled fit, written straight from the contract's diagram."""
    trace = ["before_fit"]
    for _ in range(n_epochs):
        trace += ["before_epoch", "before_train"] + BATCH_TRAIN * n_train + ["after_train"]
        if n_valid is not None:
            trace += ["before_validate"] + BATCH_VALID * n_valid + ["after_validate"]
        trace += ["after_epoch"]
    return trace + ["after_fit"]


def enclosing(trace: list[str], pos: int, stage: str) -> tuple[int, int] | None:
    """Return (start, end) of the `stage` instance whose before_ .. after_ (exclusive) holds pos."""
    depth, start = 0, None
    for i in range(pos, -1, -1):  # walk back to the unmatched before_<stage>
        if trace[i] == f"after_{stage}" and i != pos:
            depth += 1
        elif trace[i] == f"before_{stage}":
            if depth == 0:
                start = i
                break
            depth -= 1
    if start is None:
        return None
    end = trace.index(f"after_{stage}", start)
    return (start, end) if start <= pos < end else None


def expected(trace: list[str], pos: int, error: type[BaseException]) -> tuple[list[str], bool]:
    """Apply the cancel table to the full trace: return (trace, whether fit raises)."""
    stage = getattr(error, "stage", None)
    span = enclosing(trace, pos, stage) if stage else None
    if span is None:  # not a cancel, or a cancel outside its stage: an error
        closing = [] if trace[pos] == "after_fit" else ["after_fit"]
        return trace[: pos + 1] + closing, True
    _, end = span
    rest = trace[end + 1 :]
    if stage == "backward":  # the step is skipped too: resume at after_batch
        rest = rest[rest.index("after_batch") :]
    return trace[: pos + 1] + [f"after_cancel_{stage}", f"after_{stage}"] + rest, False


class Boom(Exception):
    """A bug in a callback."""


fit_shapes = st.tuples(st.integers(1, 3), st.integers(1, 3), st.none() | st.integers(1, 3))


@given(shape=fit_shapes, data=st.data())
@example(shape=(1, 1, 1), data=None)
def test_trace_follows_contract_for_any_cancel_point(shape, data):
    n_epochs, n_train, n_valid = shape
    full = full_trace(n_epochs, n_train, n_valid)
    if data is None:  # the pinned example: CancelEpoch in after_loss skips after_batch and after_train
        pos, error = full.index("after_loss"), CancelEpoch
    else:
        pos = data.draw(st.integers(0, len(full) - 1), label="raise at trace position")
        error = data.draw(st.sampled_from([*CANCELS, Boom]), label="exception")
    event = full[pos]
    tracer = Tracer(event, at=full[:pos].count(event), error=error)
    learn = make_learner(n_train, n_valid, cbs=[tracer])
    want, raises = expected(full, pos, error)
    if raises:
        with pytest.raises(error) as info:
            learn.fit(n_epochs)
        assert any(f"Tracer in event {event!r}" in note for note in info.value.__notes__)
    else:
        learn.fit(n_epochs)
    assert tracer.trace == want


@given(shape=fit_shapes)
def test_uncancelled_fit_fires_the_diagram(shape):
    n_epochs, n_train, n_valid = shape
    tracer = Tracer()
    make_learner(n_train, n_valid, cbs=[tracer]).fit(n_epochs)
    assert tracer.trace == full_trace(n_epochs, n_train, n_valid)


def test_examples_from_the_cancel_table():
    cases = {
        (CancelBatch, "after_pred"): ["after_pred", "after_cancel_batch", "after_batch", "before_batch"],
        (CancelBackward, "before_backward"): ["before_backward", "after_cancel_backward", "after_backward", "after_batch"],
        (CancelStep, "before_step"): ["before_step", "after_cancel_step", "after_step", "after_batch"],
        (CancelTrain, "after_loss"): ["after_loss", "after_cancel_train", "after_train", "before_validate"],
        (CancelValidate, "before_validate"): ["before_validate", "after_cancel_validate", "after_validate", "after_epoch"],
        (CancelEpoch, "before_train"): ["before_train", "after_cancel_epoch", "after_epoch", "before_epoch"],
        (CancelFit, "before_fit"): ["before_fit", "after_cancel_fit", "after_fit"],
    }  # fmt: skip
    for (error, event), window in cases.items():
        tracer = Tracer(event, error=error)
        make_learner(2, 1, cbs=[tracer]).fit(2)
        start = tracer.trace.index(event)
        assert tracer.trace[start : start + len(window)] == window, error


def test_cancel_step_keeps_gradients_within_the_fit():
    seen = []

    class SkipStep(Tracer):
        def before_step(self):
            if self.iter == 0:
                raise CancelStep

        def before_batch(self):  # the kept gradients are there when the next batch starts
            seen.append([p.grad is not None and bool(p.grad.abs().sum() > 0) for p in self.model.parameters()])

    learn = make_learner(2, None)
    before = [p.detach().clone() for p in learn.model.parameters()]
    learn.opt = torch.optim.SGD(learn.model.parameters(), lr=0.1)
    steps = []
    learn.opt.register_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    learn.fit(1, cbs=[SkipStep()])
    assert seen == [[False, False], [True, True]]
    assert len(steps) == 1  # the cancelled step did not run; the second batch's did
    assert not all(torch.equal(b, p) for b, p in zip(before, learn.model.parameters()))


def eval_trace(n_batches: int) -> list[str]:
    """The trace of an uncancelled evaluation (validate, get_preds, predict), from docs/loop.md."""
    return ["before_fit", "before_validate"] + BATCH_VALID * n_batches + ["after_validate", "after_fit"]


@given(n_batches=st.integers(1, 3), method=st.sampled_from(["validate", "get_preds"]), data=st.data())
def test_evaluation_trace_follows_contract_for_any_cancel_point(n_batches, method, data):
    full = eval_trace(n_batches)
    pos = data.draw(st.integers(0, len(full) - 1), label="raise at trace position")
    error = data.draw(st.sampled_from([*CANCELS, Boom]), label="exception")
    event = full[pos]
    tracer = Tracer(event, at=full[:pos].count(event), error=error)
    learn = make_learner(2, n_batches, cbs=[tracer])
    state = {k: v for k, v in vars(learn).items() if k in STATE}
    want, raises = expected(full, pos, error)
    if raises:
        with pytest.raises(error):
            getattr(learn, method)()
    else:
        getattr(learn, method)()
    assert tracer.trace == want
    assert {k: v for k, v in vars(learn).items() if k in STATE} == state  # put back, also after an error
    assert learn.model.training and torch.is_grad_enabled()
    tracer.trace = []
    learn.fit(1)  # still usable, and the fit's own grammar holds
    assert tracer.trace == full_trace(1, 2, n_batches)


@given(n_batches=st.integers(1, 3), n_valid=st.none() | st.integers(1, 2))
def test_uncancelled_evaluation_fires_before_fit_one_validation_phase_and_after_fit(n_batches, n_valid):
    tracer = Tracer()
    learn = make_learner(1, n_valid, cbs=[tracer])
    x, y = torch.randn(4 * n_batches, 4), torch.randint(0, 3, (4 * n_batches,))
    for call in (lambda: learn.validate(list(zip(x.split(4), y.split(4)))),
                 lambda: learn.get_preds(list(zip(x.split(4), y.split(4)))),
                 lambda: learn.get_preds([(xb,) for xb in x.split(4)])):  # fmt: skip
        tracer.trace = []
        call()
        assert tracer.trace == eval_trace(n_batches)
    tracer.trace = []
    learn.predict(x[:3])
    assert tracer.trace == eval_trace(1)


def test_misplaced_cancel_is_an_error_with_a_hint():
    tracer = Tracer("after_loss", error=CancelStep)
    learn = make_learner(cbs=[tracer])
    with pytest.raises(CancelStep) as info:
        learn.fit(1)
    assert any("raised outside it" in note for note in info.value.__notes__)
    assert tracer.trace[-1] == "after_fit"


def test_keyboard_interrupt_runs_after_fit_and_propagates():
    tracer = Tracer("after_batch", at=1, error=KeyboardInterrupt)
    learn = make_learner(3, 1, cbs=[tracer])
    with pytest.raises(KeyboardInterrupt):
        learn.fit(2)
    assert tracer.trace[-2:] == ["after_batch", "after_fit"]
    learn.fit(1)  # the learner is still usable


def test_after_fit_runs_every_callback_even_if_one_fails():
    tracer = Tracer()

    class BadCleanup(Tracer):
        order = 0

        def after_fit(self):
            raise RuntimeError("cleanup bug")

    learn = make_learner(cbs=[BadCleanup(), tracer])
    with pytest.raises(RuntimeError, match="cleanup bug"):
        learn.fit(1)
    assert tracer.trace[-1] == "after_fit"


def test_original_error_propagates_when_cleanup_also_fails():
    class Both(Tracer):
        def after_loss(self):
            raise ValueError("the real bug")

        def after_fit(self):
            raise RuntimeError("cleanup bug")

    with pytest.raises(ValueError, match="the real bug") as info:
        make_learner(cbs=[Both()]).fit(1)
    assert any("after_fit also failed" in note for note in info.value.__notes__)


def test_events_list_is_closed_and_unique():
    assert len(EVENTS) == len(set(EVENTS)) == 23
    assert {f"after_cancel_{c.stage}" for c in CANCELS} <= set(EVENTS)
