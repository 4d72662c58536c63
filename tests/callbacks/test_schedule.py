"""Schedules: annealers, combine_scheds, ParamScheduler, fit_one_cycle, TorchScheduler and the LR finder."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import Callback, CancelStep, Learner
from loopkit.callbacks import (
    LRFinder,
    LRFindResult,
    ParamScheduler,
    Recorder,
    SaveModel,
    TorchScheduler,
    combine_scheds,
    one_cycle_scheds,
    sched_cos,
    sched_exp,
    sched_lin,
    sched_no,
    sched_poly,
)
from tests.conftest import N_CLASSES, N_FEATURES, Tracer, make_data, make_learner

# The annealers' shapes, written out independently of callbacks/schedule.py.
CLOSED_FORMS = {
    "lin": lambda start, end, p: start + (end - start) * p,
    "cos": lambda start, end, p: start + (end - start) * (1 - math.cos(math.pi * p)) / 2,
    "exp": lambda start, end, p: start * (end / start) ** p,
    "poly2": lambda start, end, p: start + (end - start) * p**2,
    "poly_half": lambda start, end, p: start + (end - start) * p**0.5,
}
MAKERS = {
    "lin": sched_lin,
    "cos": sched_cos,
    "exp": sched_exp,
    "poly2": lambda start, end: sched_poly(start, end, 2),
    "poly_half": lambda start, end: sched_poly(start, end, 0.5),
}

values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
positive = st.floats(1e-8, 1e3)
positions = st.floats(0.0, 1.0)


@st.composite
def shape_and_ends(draw: st.DrawFn) -> tuple[str, float, float]:
    """A shape name with a start and end it accepts (exp needs both > 0)."""
    shape = draw(st.sampled_from(sorted(MAKERS)))
    ends = st.tuples(positive, positive) if shape == "exp" else st.tuples(values, values)
    return (shape, *draw(ends))


# -- annealers -------------------------------------------------------------------------------


@given(case=shape_and_ends())
@example(case=("cos", 0.1, 0.7))
@example(case=("exp", 1e-7, 10.0))
def test_annealers_hit_start_at_0_and_end_at_1_exactly(case):
    shape, start, end = case
    sched = MAKERS[shape](start, end)
    assert sched(0.0) == start and sched(1.0) == end
    assert sched_no(start, end)(0.0) == start and sched_no(start, end)(1.0) == start


@given(case=shape_and_ends(), pos=st.lists(positions, min_size=2, max_size=20))
@example(case=("exp", 0.7, 0.72), pos=[0.999999999999999, 1.0])  # unclamped, rounding overshoots end
@example(case=("cos", 9.16, 0.933), pos=[0.999999999999, 1.0])
def test_annealers_are_monotone_between_start_and_end(case, pos):
    shape, start, end = case
    sched = MAKERS[shape](start, end)
    got = [sched(p) for p in sorted(pos)]
    assert all(min(start, end) <= v <= max(start, end) for v in got)
    assert got == sorted(got, reverse=end < start)


@given(start=values, end=values, offset=st.floats(0.0, 0.5))
def test_sched_cos_is_symmetric_about_its_midpoint(start, end, offset):
    sched, middle = sched_cos(start, end), (start + end) / 2
    scale = max(abs(start), abs(end), 1.0)
    assert sched(0.5) == pytest.approx(middle, abs=1e-12 * scale)
    assert sched(0.5 + offset) - middle == pytest.approx(middle - sched(0.5 - offset), abs=1e-12 * scale)


@pytest.mark.parametrize("shape", sorted(MAKERS))
@pytest.mark.parametrize("pos", [0.1, 0.25, 0.5, 0.9])
def test_annealers_follow_their_closed_form(shape, pos):
    start, end = 0.3, 2.5
    assert MAKERS[shape](start, end)(pos) == pytest.approx(CLOSED_FORMS[shape](start, end, pos), rel=1e-12)
    assert sched_exp(1e-7, 10)(0.5) == pytest.approx(math.sqrt(1e-7 * 10), rel=1e-12)  # the geometric mean


@pytest.mark.parametrize("sched", [sched_lin(1, 3), sched_cos(0.5, 0.1), sched_exp(1e-3, 1), sched_poly(2, 0, 3),
                                   sched_no(0.4), combine_scheds([0.3, 0.7], [sched_lin(0, 1), sched_cos(1, 0)])])  # fmt: skip
def test_annealers_take_arrays_and_tensors_and_give_the_scalar_values(sched):
    pos = [0.0, 0.2, 0.3, 0.5, 0.95, 1.0]
    scalars = [sched(p) for p in pos]
    assert all(type(v) is float for v in scalars)
    array = sched(np.array(pos))
    assert isinstance(array, np.ndarray) and array.tolist() == pytest.approx(scalars, rel=1e-12)
    assert sched(pos).tolist() == pytest.approx(scalars, rel=1e-12)
    tensor = sched(torch.tensor(pos))
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    assert tensor.tolist() == pytest.approx(scalars, rel=1e-6)


def test_annealer_repr_is_the_call_that_makes_it():
    scheds = [sched_lin(0, 1.5), sched_cos(0.1, 1e-05), sched_exp(1e-07, 10), sched_no(0.9), sched_poly(1, 0, 2),
              combine_scheds([0.25, 0.75], [sched_cos(0.004, 0.1), sched_cos(0.1, 1e-06)])]  # fmt: skip
    assert repr(scheds[1]) == "sched_cos(0.1, 1e-05)"
    assert repr(scheds[5]) == "combine_scheds([0.25, 0.75], [sched_cos(0.004, 0.1), sched_cos(0.1, 1e-06)])"
    for sched in scheds:
        again = eval(repr(sched))
        assert [again(p) for p in (0, 0.3, 1)] == [sched(p) for p in (0, 0.3, 1)]


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: sched_exp(0, 1), ValueError, "must be > 0"),
        (lambda: sched_exp(1, -1), ValueError, "must be > 0"),
        (lambda: sched_poly(0, 1, 0), ValueError, "power must be > 0"),
        (lambda: sched_lin("0.1", 1), TypeError, "start must be a number"),
        (lambda: sched_cos(0, float("nan")), ValueError, "end must be finite"),
        (lambda: sched_no(True), TypeError, "must be a number"),
    ],
)
def test_invalid_annealer_arguments_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


# -- combine_scheds -------------------------------------------------------------------------


@st.composite
def pieces(draw: st.DrawFn, chained: bool = False) -> tuple[list[float], list, list[tuple[str, float, float]]]:
    """Positive pcts summing to 1, and a schedule per piece (end of one = start of the next if chained)."""
    weights = draw(st.lists(st.floats(0.05, 1.0), min_size=1, max_size=4))
    pcts = [w / sum(weights) for w in weights]
    ends = draw(st.lists(positive, min_size=len(pcts) + 1, max_size=len(pcts) + 1))
    specs = []
    for i in range(len(pcts)):
        shape = draw(st.sampled_from(sorted(MAKERS)))
        start, end = (ends[i], ends[i + 1]) if chained else (draw(positive), draw(positive))
        specs.append((shape, start, end))
    return pcts, [MAKERS[s](a, b) for s, a, b in specs], specs


@given(case=pieces(), fracs=st.lists(st.floats(0.001, 0.999), min_size=1, max_size=5))
def test_combine_scheds_equals_its_piece_inside_each_interval(case, fracs):
    pcts, scheds, specs = case
    combined = combine_scheds(pcts, scheds)
    low = 0.0
    for pct, (shape, start, end) in zip(pcts, specs):
        for frac in fracs:
            expected = CLOSED_FORMS[shape](start, end, frac)
            assert combined(low + frac * pct) == pytest.approx(expected, rel=1e-6)
        low += pct
    assert combined(1.0) == specs[-1][2]


@given(case=pieces(chained=True))
def test_combine_scheds_is_continuous_at_joins_when_pieces_share_endpoints(case):
    pcts, scheds, specs = case
    combined = combine_scheds(pcts, scheds)
    join, scale = 0.0, max(max(start, end) for _, start, end in specs)
    for pct, (_, _, end) in zip(pcts[:-1], specs[:-1]):
        join += pct
        assert combined(join) == pytest.approx(end, rel=1e-9)
        for eps in (1e-12, -1e-12):  # tiny, as sched_poly(..., 0.5) is steep at its start
            assert combined(join + eps) == pytest.approx(end, abs=1e-4 * scale)


@given(weights=st.lists(st.floats(0.05, 1.0), min_size=2, max_size=5))
@example(weights=[0.6, 0.3, 0.1])  # joins 0.6 and 0.8999999999999999, not 0.9
@example(weights=[0.25, 0.5, 0.25])
def test_at_a_join_of_combine_scheds_the_next_piece_starts(weights):
    pcts = [w / sum(weights) for w in weights]
    # pieces that never meet: piece i runs from 10 * i + 1 to 10 * i + 5, so a value names its piece
    combined = combine_scheds(pcts, [sched_lin(10 * i + 1, 10 * i + 5) for i in range(len(pcts))])
    joins = list(itertools.accumulate(pcts[:-1]))  # the cumulative sums: where piece i + 1 begins
    for i, join in enumerate(joins, start=1):
        assert combined(join) == 10 * i + 1  # exactly the next piece's start, not the previous one's end
        assert combined(math.nextafter(join, 0.0)) == pytest.approx(10 * i - 5)  # just before: the end of piece i - 1
    for positions in (np.array(joins), torch.tensor(joins, dtype=torch.float64)):
        assert combined(positions).tolist() == [10 * i + 1 for i in range(1, len(pcts))]


def test_combine_scheds_accepts_pcts_that_sum_to_1_within_1e_6():
    assert sum([0.6, 0.3, 0.1]) != 1.0  # 0.9999999999999999: the case the tolerance is for
    combined = combine_scheds([0.6, 0.3, 0.1], [sched_lin(0, 1), sched_lin(1, 2), sched_cos(2, 7)])
    assert combined(1.0) == 7 and combined(0.0) == 0
    assert combined(0.6) == pytest.approx(1) and combined(0.75) == pytest.approx(1.5)
    assert combine_scheds([0.5, 0.5 + 9e-7], [sched_no(1), sched_lin(1, 3)])(1.0) == 3


@pytest.mark.parametrize(
    ("pcts", "scheds", "error", "match"),
    [
        ([0.3, 0.6], [sched_no(0), sched_no(1)], ValueError, r"pcts must sum to 1, got 0\.9 from \[0\.3, 0\.6\]; add 0\.1"),
        ([0.5, 0.6], [sched_no(0), sched_no(1)], ValueError, r"remove 0\.1 from one phase"),
        ([1.0, 0.0], [sched_no(0), sched_no(1)], ValueError, "every pct must be > 0"),
        ([1.2, -0.2], [sched_no(0), sched_no(1)], ValueError, "every pct must be > 0"),
        ([1.0], [sched_no(0), sched_no(1)], ValueError, "same length"),
        ([], [], ValueError, "non-empty"),
        ([1.0], [0.5], TypeError, "function of pos"),
        (1.0, [sched_no(0)], TypeError, "two lists"),
    ],
)
def test_combine_scheds_rejects_bad_arguments(pcts, scheds, error, match):
    with pytest.raises(error, match=match):
        combine_scheds(pcts, scheds)


# -- ParamScheduler ---------------------------------------------------------------------------


class HyperSpy(Callback):
    """At each before_batch, after the scheduler, note the phase, pct_train and every group's lr and mom."""

    def __init__(self) -> None:
        self.rows: list[tuple[bool, float, list[float], list[float]]] = []

    def before_batch(self) -> None:
        groups = self.opt.param_groups
        moms = [g["betas"][0] if "betas" in g else g["momentum"] for g in groups]
        self.rows.append((self.training, self.pct_train, [g["lr"] for g in groups], moms))


def two_groups(learn: Learner, opt: str = "sgd") -> Learner:
    """Give `learn` an optimizer with the weight and the bias in two param groups."""
    groups = [{"params": [learn.model.weight]}, {"params": [learn.model.bias]}]
    learn.opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9) if opt == "sgd" else torch.optim.Adam(groups, lr=0.1)
    return learn


@given(n_epochs=st.integers(1, 3), n_train=st.integers(1, 4), n_valid=st.none() | st.integers(1, 2))
def test_param_scheduler_sets_what_its_function_gives_at_pct_train(n_epochs, n_train, n_valid):
    lr, mom = sched_cos(0.5, 0.01), combine_scheds([0.4, 0.6], [sched_lin(0.9, 0.8), sched_exp(0.8, 0.95)])
    spy = HyperSpy()
    learn = make_learner(n_train, n_valid, cbs=[ParamScheduler({"lr": lr, "mom": mom}), spy, Recorder()])
    learn.opt = torch.optim.SGD(learn.model.parameters(), lr=7.0, momentum=0.0)
    learn.fit(n_epochs)
    train = [row for row in spy.rows if row[0]]
    pcts = [(e + i / n_train) / n_epochs for e in range(n_epochs) for i in range(n_train)]
    assert [pct for _, pct, _, _ in train] == pytest.approx(pcts)
    assert [lrs for _, _, lrs, _ in train] == [[lr(pct)] for _, pct, _, _ in train]
    assert [moms for _, _, _, moms in train] == [[mom(pct)] for _, pct, _, _ in train]
    valid = [row for row in spy.rows if not row[0]]
    # validation batches see the values of the last training batch: nothing is set there
    assert all(row[2:] == train[(k // (n_valid or 1) + 1) * n_train - 1][2:] for k, row in enumerate(valid))
    assert learn.recorder.hps["lr"] == [[lrs[0] for _, _, lrs, _ in train]]
    assert learn.recorder.moms == [moms[0] for _, _, _, moms in train]


def test_per_group_schedules_land_in_their_group():
    learn = two_groups(make_learner(4, None, cbs=[Recorder()]))
    scheds = {"lr": [sched_lin(0.1, 0.2), sched_lin(3.0, 4.0)], "mom": sched_no(0.5), "weight_decay": [sched_no(0.0), sched_no(0.1)]}
    learn.fit(1, cbs=[ParamScheduler(scheds)])
    hps = learn.recorder.hps
    assert hps["lr"] == [pytest.approx([0.1, 0.125, 0.15, 0.175]), pytest.approx([3.0, 3.25, 3.5, 3.75])]
    assert hps["mom"] == [[0.5] * 4, [0.5] * 4]
    assert hps["weight_decay"] == [[0.0] * 4, [0.1] * 4]


def test_mom_is_momentum_for_sgd_and_the_first_beta_for_adam():
    for opt in ("sgd", "adam"):
        learn = two_groups(make_learner(2, None, cbs=[Recorder()]), opt)
        learn.fit(1, cbs=[ParamScheduler({"mom": [sched_lin(0.9, 0.8), sched_lin(0.7, 0.6)]})])
        assert learn.recorder.hps["mom"] == [pytest.approx([0.9, 0.85]), pytest.approx([0.7, 0.65])]
        # Hyper-parameters are per fit: after it every group has its own values back.
        if opt == "adam":
            assert [g["betas"] for g in learn.opt.param_groups] == [(0.9, 0.999), (0.9, 0.999)]
        else:
            assert [g["momentum"] for g in learn.opt.param_groups] == [0.9, 0.9]


@pytest.mark.parametrize(
    ("scheds", "opt", "match"),
    [
        ({"wd": sched_no(0.1)}, "sgd", r"'wd' is not a hyper-parameter .* 'lr', 'mom', 'dampening', .*'weight_decay'"),
        ({"betas": sched_no(0.9)}, "adam", r"'betas' is not a hyper-parameter .*'mom'"),
        ({"mom": sched_no(0.9)}, "adagrad", r"'mom' is not a hyper-parameter of param group 0 of Adagrad"),
        ({"lr": [sched_no(0.1)] * 3}, "sgd", "'lr' has 3 schedules but the optimizer has 2 param groups"),
    ],
)
def test_param_scheduler_checks_names_and_groups_against_the_optimizer(scheds, opt, match):
    learn = two_groups(make_learner(2, None), "adam" if opt == "adam" else "sgd")
    if opt == "adagrad":
        learn.opt = torch.optim.Adagrad(learn.model.parameters())
    with pytest.raises(ValueError, match=match) as info:
        learn.fit(1, cbs=[ParamScheduler(scheds)])
    assert "raised by callback ParamScheduler in event 'before_fit'" in info.value.__notes__


@pytest.mark.parametrize(
    ("scheds", "error", "match"),
    [
        ([sched_no(1)], TypeError, "dict of hyper-parameter name"),
        ({}, TypeError, "dict of hyper-parameter name"),
        ({"lr": 0.1}, TypeError, "must be a function of pos"),
        ({"lr": []}, ValueError, "is empty"),
        ({"lr": lambda p: "fast"}, TypeError, "must return a number for pos=0.0"),
        ({1: sched_no(1)}, TypeError, "names must be strings"),
    ],
)
def test_param_scheduler_rejects_bad_schedules_when_built(scheds, error, match):
    with pytest.raises(error, match=match):
        ParamScheduler(scheds)


# -- fit_one_cycle --------------------------------------------------------------------------


def one_cycle(pct: float, start: float, peak: float, end: float, pct_start: float) -> float:
    """The one-cycle curve: half cosine start -> peak over pct_start, then peak -> end."""
    if pct < pct_start:
        t, a, b = pct / pct_start, start, peak
    else:
        t, a, b = (pct - pct_start) / (1 - pct_start), peak, end
    return a + (b - a) * (1 - math.cos(math.pi * t)) / 2


@given(
    n_epochs=st.integers(1, 3),
    n_train=st.integers(1, 5),
    lr_max=st.floats(1e-4, 1.0) | st.lists(st.floats(1e-4, 1.0), min_size=2, max_size=2),
    div=st.floats(1.5, 100.0),
    div_final=st.floats(10.0, 1e6),
    pct_start=st.floats(0.05, 0.95),
    moms=st.tuples(st.floats(0.5, 0.99), st.floats(0.5, 0.99), st.floats(0.5, 0.99)),
    opt=st.sampled_from(["sgd", "adam"]),
)
@example(n_epochs=1, n_train=4, lr_max=0.1, div=25.0, div_final=1e5, pct_start=0.25, moms=(0.95, 0.85, 0.95), opt="sgd")
def test_fit_one_cycle_records_the_closed_form_curve_at_every_batch(n_epochs, n_train, lr_max, div, div_final,
                                                                     pct_start, moms, opt):  # fmt: skip
    spy = HyperSpy()
    learn = two_groups(make_learner(n_train, 1, cbs=[Recorder(), spy]), opt)
    learn.fit_one_cycle(n_epochs, lr_max, div=div, div_final=div_final, pct_start=pct_start, moms=moms)
    pcts = [pct for training, pct, _, _ in spy.rows if training]
    assert len(pcts) == n_epochs * n_train == len(learn.recorder.lrs)
    lr_maxes = lr_max if isinstance(lr_max, list) else [lr_max, lr_max]
    for group, top in enumerate(lr_maxes):
        expected = [one_cycle(p, top / div, top, top / div_final, pct_start) for p in pcts]
        assert learn.recorder.hps["lr"][group] == pytest.approx(expected, rel=1e-9)
        assert learn.recorder.hps["lr"][group][0] == pytest.approx(top / div, rel=1e-12)
        expected_moms = [one_cycle(p, *moms, pct_start) for p in pcts]
        assert learn.recorder.hps["mom"][group] == pytest.approx(expected_moms, rel=1e-9)


def test_fit_one_cycle_peaks_at_pct_start_and_ends_near_lr_max_over_div_final():
    learn = make_learner(100, None, cbs=[Recorder()])
    learn.fit_one_cycle(1, 0.2, pct_start=0.25)
    lrs = learn.recorder.lrs
    assert lrs[0] == pytest.approx(0.2 / 25) and max(lrs) == lrs[25] == 0.2
    assert lrs[-1] == pytest.approx(one_cycle(0.99, 0, 0.2, 0.2 / 1e5, 0.25)) and lrs[-1] < 1e-3 * 0.2
    assert min(learn.recorder.moms) == learn.recorder.moms[25] == 0.85


def test_fit_one_cycle_makes_the_optimizer_sets_wd_and_adds_its_scheduler_for_one_fit():
    learn = make_learner(3, None, cbs=[Recorder()], opt_func=torch.optim.AdamW)
    assert learn.opt is None
    learn.fit_one_cycle(1, 0.01, wd=0.05)
    assert isinstance(learn.opt, torch.optim.AdamW)
    # Weight decay for the weights; the bias has a group of its own without it (wd_bn_bias=False).
    assert learn.recorder.hps["weight_decay"] == [[0.05] * 3, [0.0] * 3]
    assert [p for g in learn.opt.param_groups for p in g["params"]] == [learn.model.weight, learn.model.bias]
    assert not any(isinstance(cb, ParamScheduler) for cb in learn.cbs)
    fig = learn.recorder.plot_sched()
    assert [ax.get_title() for ax in fig.axes] == ["lr", "mom", "weight_decay"]  # every scheduled name
    assert [(g["lr"], g["betas"], g["weight_decay"]) for g in learn.opt.param_groups] == [
        (0.01, (0.9, 0.999), 0.01), (0.01, (0.9, 0.999), 0.0)]  # fmt: skip
    learn.fit_one_cycle(1, [0.01, 0.02], moms=None)  # again, with a per-group list and momentum left alone
    # The first fit's hypers did not leak: AdamW's own first beta and weight decay are back.
    assert learn.recorder.moms == [0.9] * 3 and len(set(learn.recorder.lrs)) == 3
    assert learn.recorder.hps["weight_decay"] == [[0.01] * 3, [0.0] * 3]
    learn.fit_one_cycle(1, 0.01, wd=0.05, wd_bn_bias=True)  # every group decays
    assert learn.recorder.hps["weight_decay"] == [[0.05] * 3, [0.05] * 3]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lr_max=0.1, pct_start=0.0), "pct_start .* strictly between 0 and 1"),
        (dict(lr_max=0.1, pct_start=1.0), "pct_start .* strictly between 0 and 1"),
        (dict(lr_max=0.0), "lr_max must be > 0"),
        (dict(lr_max=[]), "empty list"),
        (dict(lr_max=0.1, div=0), "div must be >= 1, got 0"),
        (dict(lr_max=0.1, div=0.5), r"div must be >= 1, got 0.5: the lr starts at lr_max / div, .* div=25"),
        (dict(lr_max=0.1, div_final=0.1), r"div_final must be >= 1, got 0.1: the lr ends at lr_max / div_final"),
        (dict(lr_max=0.1, moms=(0.95, 0.85, 1.0)), r"each of moms must be in \[0, 1\) .* got \(0.95, 0.85, 1.0\)"),
        (dict(lr_max=0.1, moms=(-0.1, 0.85, 0.9)), r"each of moms must be in \[0, 1\)"),
        (dict(lr_max=0.1, moms=(0.9, 0.8)), "three momentums"),
        (dict(lr_max=0.1, wd=-1), "wd .* must be >= 0"),
        (dict(lr_max=[0.1, 0.2, 0.3]), "'lr' has 3 schedules but the optimizer has 1 param group;"),
    ],
)
def test_fit_one_cycle_rejects_bad_arguments(kwargs, match):
    learn = make_learner(2, None)
    with pytest.raises(ValueError, match=match):
        learn.fit_one_cycle(1, **kwargs)
    assert not any(isinstance(cb, ParamScheduler) for cb in learn.cbs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lr_max="1e-3"), r"lr_max must be a number .* got the string '1e-3'; pass a float such as 1e-3"),
        (dict(lr_max=[0.1, "0.2"]), r"lr_max must be a number, got '0.2'"),
        (dict(lr_max=0.1, div="25"), r"div must be a number, got '25'"),
        (dict(lr_max=0.1, div_final=None), r"div_final must be a number, got None"),
        (dict(lr_max=0.1, pct_start="0.3"), r"pct_start must be a number, got '0.3'"),
        (dict(lr_max=0.1, moms=(0.95, "0.85", 0.95)), r"each of moms must be a number, got '0.85'"),
    ],
)
def test_fit_one_cycle_rejects_values_that_are_not_numbers_before_training(kwargs, match):
    with pytest.raises(TypeError, match=f"^fit_one_cycle: {match}"):
        one_cycle_scheds(**kwargs)
    learn = make_learner(2, None)
    weights = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(TypeError, match=match):
        learn.fit_one_cycle(1, **kwargs)
    assert learn.opt is None and all(torch.equal(w, p) for w, p in zip(weights, learn.model.parameters()))


# -- TorchScheduler ---------------------------------------------------------------------------


def test_torch_scheduler_per_batch_trains_like_a_raw_torch_loop():
    x, y = make_data(24)
    batches = list(zip(x.split(4), y.split(4)))
    one_cycle_lr = lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=12)  # noqa: E731
    opt_func = lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9)  # noqa: E731

    learn = make_learner(6, None, opt_func=opt_func, cbs=[Recorder()])
    learn.fit(2, cbs=[TorchScheduler(one_cycle_lr)])

    model = make_learner(6, None).model  # same seed, same weights
    opt = opt_func(model.parameters(), 0.01)
    scheduler, lrs = one_cycle_lr(opt), []
    for _ in range(2):
        for xb, yb in batches:
            lrs.append(opt.param_groups[0]["lr"])
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            opt.zero_grad()
            scheduler.step()
    assert learn.recorder.lrs == lrs and len(set(lrs)) == 12
    assert torch.equal(learn.model.weight, model.weight) and torch.equal(learn.model.bias, model.bias)


class CancelOddSteps(Callback):
    def before_step(self) -> None:
        if self.iter % 2:
            raise CancelStep


def test_torch_scheduler_steps_only_when_the_optimizer_stepped():
    learn = make_learner(6, None, cbs=[Recorder(), CancelOddSteps()])
    learn.fit(1, cbs=[TorchScheduler(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))])
    # recorded before each batch's step: the cancelled odd batches leave the lr as it was
    assert learn.recorder.lrs == [0.01, 0.005, 0.005, 0.0025, 0.0025, 0.00125]


def test_torch_scheduler_per_epoch_and_reduce_on_plateau():
    learn = make_learner(2, 1, cbs=[Recorder()])
    learn.fit(3, cbs=[TorchScheduler(lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.1), every="epoch")])
    assert learn.recorder.lrs == pytest.approx([0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4], rel=1e-12)
    halve = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5**epoch)  # noqa: E731
    learn.fit(2, lr=0.5, cbs=[TorchScheduler(halve, every="epoch")])
    assert learn.recorder.lrs == [0.5, 0.5, 0.25, 0.25]  # a fresh schedule from the fit's lr, not the last one's

    learn = make_learner(2, 1, default_cbs=True)
    learn.progress_bar.enabled = False
    plateau = TorchScheduler(lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=0),
                             every="epoch", monitor="train_loss")  # fmt: skip
    learn.fit(4, cbs=[plateau])
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(
        torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.01), mode="max", patience=0
    )
    expected = []
    for row in learn.avg_stats.history:
        expected += [reference.optimizer.param_groups[0]["lr"]] * 2
        reference.step(row["train_loss"])
    assert learn.recorder.lrs == pytest.approx(expected) and len(set(expected)) > 1


def test_torch_scheduler_state_is_checkpointed_so_a_resumed_fit_continues_it(tmp_path):
    def make() -> Learner:
        learn = make_learner(3, 1, default_cbs=True, opt_func=lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9))
        learn.progress_bar.enabled = False
        return learn

    one_cycle_lr = lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=9)  # noqa: E731
    straight = make()
    straight.fit(3, cbs=[TorchScheduler(one_cycle_lr), SaveModel("train_loss", every_epoch=True, path=tmp_path / "m.pt")])
    resumed = make()
    resumed.fit(3, cbs=[TorchScheduler(one_cycle_lr), SaveModel("train_loss", every_epoch=True, path=tmp_path / "r.pt")],
                resume=tmp_path / "m_epoch0.pt")  # fmt: skip
    assert resumed.recorder.lrs == straight.recorder.lrs and len(set(straight.recorder.lrs)) == 9
    assert torch.equal(resumed.model.weight, straight.model.weight)


def test_torch_scheduler_rejects_bad_arguments():
    learn = make_learner(2, None)
    with pytest.raises(ValueError, match="every must be 'batch' or 'epoch'"):
        TorchScheduler(lambda opt: None, every="iter")
    with pytest.raises(TypeError, match="function opt -> scheduler"):
        TorchScheduler(0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ReduceLROnPlateau steps on an epoch's figure"):
        learn.fit(1, cbs=[TorchScheduler(lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt))])
    other = torch.optim.SGD(learn.model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"the StepLR was built on another optimizer than learn.opt .*"
                                         r"learn.create_opt\(\).* pass a function that builds it on learn.opt"):
        learn.fit(1, cbs=[TorchScheduler(torch.optim.lr_scheduler.StepLR(other, 1))])


@pytest.mark.parametrize(
    ("cls", "match"),
    [
        (torch.optim.lr_scheduler.CosineAnnealingLR, r"got the class CosineAnnealingLR, which needs 'T_max' as well as "
         r"the optimizer; pass a function that builds it, e.g. TorchScheduler\(lambda opt: CosineAnnealingLR\(opt, "
         r"T_max=...\)\)"),
        (torch.optim.lr_scheduler.StepLR, r"StepLR, which needs 'step_size' .* StepLR\(opt, step_size=...\)"),
        (torch.optim.SGD, r"got the class SGD, which is not a scheduler"),
    ],
)
def test_torch_scheduler_given_a_class_that_needs_arguments_says_to_pass_a_lambda(cls, match):
    with pytest.raises(TypeError, match=match):
        TorchScheduler(cls)


def test_torch_scheduler_takes_a_class_that_needs_only_the_optimizer():
    learn = make_learner(2, 1, default_cbs=True)
    learn.progress_bar.enabled = False
    sched = TorchScheduler(torch.optim.lr_scheduler.ReduceLROnPlateau, every="epoch")
    learn.fit(1, cbs=[sched])
    assert isinstance(sched.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and sched.scheduler.optimizer is learn.opt


# -- LRFinder and lr_find ---------------------------------------------------------------------


def bn_learner(opt_func, n_train: int = 4, **kwargs) -> Learner:
    """A learner whose model has buffers (BatchNorm running stats) as well as parameters."""
    learn = make_learner(n_train, 1, opt_func=opt_func, **kwargs)
    torch.manual_seed(0)
    learn.model = nn.Sequential(nn.Linear(N_FEATURES, 8), nn.BatchNorm1d(8), nn.Linear(8, N_CLASSES))
    return learn


def snapshot(learn: Learner) -> dict:
    """Copy everything lr_find must leave unchanged in the model and the optimizer."""
    opt = learn.opt.state_dict()
    return {
        "model": {k: v.clone() for k, v in learn.model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in learn.model.parameters()],
        "modes": [m.training for m in learn.model.modules()],
        "opt_state": {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for i, s in opt["state"].items()},
        "groups": [dict(g) for g in opt["param_groups"]],
    }


def assert_bitwise_equal(before: dict, after: dict) -> None:
    assert before["model"].keys() == after["model"].keys()
    for k, v in before["model"].items():
        assert v.dtype == after["model"][k].dtype and torch.equal(v, after["model"][k]), k
    for g0, g1 in zip(before["grads"], after["grads"]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    assert before["modes"] == after["modes"]
    assert before["opt_state"].keys() == after["opt_state"].keys()
    for i, state in before["opt_state"].items():
        assert state.keys() == after["opt_state"][i].keys()
        for k, v in state.items():
            w = after["opt_state"][i][k]
            assert (torch.equal(v, w) and v.dtype == w.dtype) if torch.is_tensor(v) else v == w, (i, k)
    assert before["groups"] == after["groups"]


class WeightSpy(Callback):
    """Copy the weights at after_fit, before LRFinder (order 100) puts them back."""

    order = 99

    def after_fit(self) -> None:
        self.weights = [p.detach().clone() for p in self.model.parameters()]


@pytest.mark.parametrize(
    "opt_func",
    [
        lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4),
        lambda params, lr: torch.optim.Adam(params, lr=lr),
    ],
    ids=["sgd_momentum", "adam"],
)
def test_lr_find_restores_every_parameter_buffer_and_optimizer_state_bitwise(opt_func):
    learn = bn_learner(opt_func)
    learn.fit(2)  # momentum buffers / exp_avg, exp_avg_sq and step counts exist
    learn.model[0].weight.grad = torch.full_like(learn.model[0].weight, 0.5)  # a gradient the user left
    learn.model.eval()
    before = snapshot(learn)
    assert before["opt_state"] and any("step" in s or "momentum_buffer" in s for s in before["opt_state"].values())
    spy = WeightSpy()
    result = learn.lr_find(num_it=20, cbs=[spy])
    assert len(result.lrs) > 5
    assert not all(torch.equal(a, b) for a, b in zip(spy.weights, learn.model.parameters()))  # the sweep did train
    assert_bitwise_equal(before, snapshot(learn))


def test_lr_find_on_a_fresh_learner_leaves_no_optimizer():
    learn = bn_learner(torch.optim.Adam)
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    learn.lr_find(num_it=10)
    assert learn.opt is None
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in weights.items())


class Boom(Exception):
    """A bug in a callback, mid-sweep."""


def test_lr_find_puts_everything_back_even_when_the_sweep_raises():
    learn = bn_learner(lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9))
    learn.fit(1)
    before, epoch = snapshot(learn), learn.epoch
    with pytest.raises(Boom):
        learn.lr_find(num_it=30, cbs=[Tracer("after_batch", at=6, error=Boom)])
    assert_bitwise_equal(before, snapshot(learn))
    assert learn.epoch == epoch and not any(isinstance(cb, LRFinder) for cb in learn.cbs)


def shuffled_learner() -> Learner:
    x, y = make_data(48)
    dls = (DataLoader(TensorDataset(x[:32], y[:32]), batch_size=8, shuffle=True), DataLoader(TensorDataset(x[32:], y[32:]), batch_size=8))
    learn = Learner(nn.Linear(N_FEATURES, N_CLASSES), dls, F.cross_entropy, lr=0.1,
                    opt_func=lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9))  # fmt: skip
    learn.progress_bar.enabled = False
    return learn


def test_lr_find_leaves_the_learner_as_if_it_had_not_run():
    torch.manual_seed(1)
    plain, probed = shuffled_learner(), shuffled_learner()
    plain.model.load_state_dict(probed.model.state_dict())
    torch.manual_seed(2)
    plain.fit(1)
    torch.manual_seed(2)
    probed.fit(1)
    counters = ("n_epochs", "epoch", "train_iter", "pct_train", "training", "iter", "n_iter")
    before = [getattr(probed, name) for name in counters]
    history, losses = list(probed.avg_stats.history), list(probed.recorder.losses)
    rng = torch.get_rng_state()
    probed.lr_find(num_it=30)
    assert [getattr(probed, name) for name in counters] == before
    assert probed.avg_stats.history == history and probed.recorder.losses == losses
    probed.fit(2)
    torch.set_rng_state(rng)  # the RNG state (shuffling) was put back too, so both continue identically
    plain.fit(2)
    assert torch.equal(plain.model.weight, probed.model.weight)
    assert plain.recorder.losses == probed.recorder.losses


def test_lr_find_sweeps_exponentially_across_epochs_and_skips_validation():
    tracer = Tracer()
    learn = make_learner(3, 2)
    result = learn.lr_find(start_lr=1e-5, end_lr=1.0, num_it=10, stop_div=False, cbs=[tracer])
    assert result.lrs[0] == 1e-5 and result.lrs[-1] == 1.0
    assert result.lrs == pytest.approx([1e-5 * (1e5 ** (i / 9)) for i in range(10)], rel=1e-12)
    assert tracer.trace.count("before_epoch") == 4  # 3 batches per epoch: 10 batches need 4 epochs
    assert tracer.trace.count("before_batch") == 10  # all training batches
    assert tracer.trace.count("after_batch") == 9  # the 10th is cancelled at its loss
    # LRFinder (order 100) cancels each validation before the tracer (1000) sees before_validate
    assert tracer.trace.count("after_cancel_validate") == 3 and tracer.trace.count("before_validate") == 0
    assert tracer.trace.count("after_cancel_fit") == 1  # stopped at the 10th loss, mid-epoch


def test_lr_find_stops_once_the_smoothed_loss_diverges():
    x, y = make_data(32)
    learn = make_learner(8, None)
    stopped = learn.lr_find(start_lr=1e-3, end_lr=1e6, num_it=60)
    assert len(stopped.lrs) < 60
    last, best = stopped.losses[-1], min(stopped.losses)
    assert not math.isfinite(last) or last > 4 * best
    assert all(loss <= 4 * best for loss in stopped.losses[:-1])
    full = learn.lr_find(start_lr=1e-3, end_lr=1e6, num_it=60, stop_div=False)
    assert len(full.lrs) == 60


def test_suggestions_are_the_steepest_slope_and_the_minimum_over_10():
    lrs = np.logspace(-6, 0, 13).tolist()
    losses = [2.0, 2.0, 1.99, 1.95, 1.8, 1.3, 1.0, 0.9, 0.85, 0.84, 1.5, 9.0, float("nan")]
    result = LRFindResult.from_sweep(lrs, losses)
    assert result.lr_min == lrs[9] / 10
    assert result.lr_steep == lrs[5]  # the central difference is steepest where 1.8 -> 1.3 -> 1.0
    # a noisy drop in the first tenth of the sweep is not taken for the descent
    noisy = [3.0, 1.0, 2.9, 2.8, 2.7, 2.6, 2.3, 2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3, 1.2, 1.1, 1.0, 0.9, 0.8, 2.0]
    many = np.logspace(-6, 0, len(noisy)).tolist()
    assert LRFindResult.from_sweep(many, noisy).lr_steep == many[6]
    rising = LRFindResult.from_sweep(lrs[:3], [1.0, 2.0, 3.0])
    assert rising.lr_steep == lrs[0] and rising.lr_min == lrs[0] / 10
    with pytest.raises(ValueError, match="none of the 2 recorded losses is finite"):
        LRFindResult.from_sweep(lrs[:2], [float("nan"), float("inf")])


def test_lr_find_plot_marks_both_suggestions_on_a_log_axis_and_saves_png(tmp_path):
    result = make_learner(4, None).lr_find(num_it=20)
    fig = result.plot(path=tmp_path / "lr_find.png")
    assert isinstance(fig, Figure)
    assert (tmp_path / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    curve, steep, low = ax.get_lines()
    assert list(curve.get_xdata()) == result.lrs and list(curve.get_ydata()) == pytest.approx(result.losses)
    assert list(steep.get_xdata()) == [result.lr_steep] and list(low.get_xdata()) == [result.lr_min]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"steepest: {result.lr_steep:.2e}", f"minimum / 10: {result.lr_min:.2e}"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(start_lr=1.0, end_lr=0.1), "need 0 < start_lr < end_lr"),
        (dict(start_lr=0.0), "need 0 < start_lr < end_lr"),
        (dict(num_it=1), "num_it .* int >= 2"),
        (dict(num_it=10.0), "num_it .* int >= 2"),
    ],
)
def test_lr_finder_rejects_bad_arguments(kwargs, match):
    learn = make_learner(2, None)
    with pytest.raises(ValueError, match=match):
        learn.lr_find(**kwargs)
    with pytest.raises(ValueError, match=match):
        LRFinder(**kwargs)


def test_lr_find_result_is_the_suggested_lr_and_loggers_sit_the_sweep_out(tmp_path):
    from loopkit.callbacks import CSVLogger, SaveModel

    learn = make_learner(4, 2, default_cbs=True)
    learn.progress_bar.enabled = False
    log, best = CSVLogger(tmp_path / "log.csv"), SaveModel(path=tmp_path / "best.pt")
    learn.add_cbs(log, best)
    found = learn.lr_find(num_it=12)
    assert isinstance(found, float) and float(found) == found.lr_steep
    assert not (tmp_path / "log.csv").exists() and not (tmp_path / "best.pt").exists()
    assert log.learn is learn and best.learn is learn  # back on the learner for the real fit
    learn.fit_one_cycle(1, found)
    assert (tmp_path / "log.csv").exists() and (tmp_path / "best.pt").exists()


# -- schedule anything: attributes by dotted path ---------------------------------------------------


def dropout_learner(n_train: int = 4) -> Learner:
    learn = make_learner(n_train, 1, cbs=[Recorder()])
    torch.manual_seed(0)
    learn.model = nn.Sequential(nn.Linear(N_FEATURES, 8), nn.Dropout(0.5), nn.Linear(8, N_CLASSES))
    return learn


@given(n_epochs=st.integers(1, 3), n_train=st.integers(1, 4))
def test_a_dropout_scheduled_by_path_is_set_and_recorded_at_every_batch_and_put_back(n_epochs, n_train):
    learn = dropout_learner(n_train)
    sched = sched_lin(0.1, 0.6)
    seen = []

    class Spy(Callback):
        order = 10

        def before_batch(self):
            if self.training:
                seen.append((self.pct_train, self.model[1].p))

    learn.fit(n_epochs, cbs=[ParamScheduler({"model.1.p": sched}), Spy()])
    assert [p for _, p in seen] == [sched(pct) for pct, _ in seen]
    assert learn.recorder.hps["model.1.p"] == [[p for _, p in seen]]
    assert learn.model[1].p == 0.5  # per fit, as optimizer hypers are
    fig = learn.recorder.plot_sched()
    assert "model.1.p" in [ax.get_title() for ax in fig.axes]


@pytest.mark.parametrize(("path", "match"), [
    ("model.9.p", r"'model.9.p' does not resolve: learn.model has no attribute '9'"),
    ("model.1.q", r"'model.1.q' does not resolve: learn.model.1 has no attribute 'q'"),
    ("model.1.inplace", r"'model.1.inplace' is False \(bool\), not a number"),
])  # fmt: skip
def test_a_path_that_does_not_resolve_or_is_not_a_number_is_refused_before_training(path, match):
    learn = dropout_learner()
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match=match):
        learn.fit(1, cbs=[ParamScheduler({path: sched_lin(0.1, 0.6)})])
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))
