"""A learner driven through random sequences of add, remove and fit, beside a plain-list model."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from loopkit import Callback
from loopkit.callbacks import TrainEval
from tests.conftest import make_learner

NAMES = ["alpha", "beta", "gamma", "delta", "epsilon"]
ORDERS = st.sampled_from([-5, 0, 0, 3, 3, 7])


class Logged(Callback):
    """Append its name to a shared log when the fit starts."""

    def __init__(self, name: str, order: int, log: list[str], fail: bool = False):
        self.name, self.order, self.log, self.fail = name, order, log, fail

    def before_fit(self) -> None:
        self.log.append(self.name)

    def before_epoch(self) -> None:
        if self.fail:
            raise RuntimeError("per-fit callback failed")


def stable_sorted(cbs: list[Logged]) -> list[Logged]:
    """The trivially correct ordering: Python's sort is stable."""
    return sorted(cbs, key=lambda cb: cb.order)


class LearnerCallbacks(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.learn = make_learner(n_train=1, n_valid=None)
        self.model: list[Logged] = []
        self.log: list[str] = []

    def taken(self) -> set[str]:
        return {cb.name for cb in self.model}

    @rule(name=st.sampled_from(NAMES), order=ORDERS)
    def add(self, name, order):
        cb = Logged(name, order, self.log)
        if name in self.taken():
            with pytest.raises(ValueError, match="already added"):
                self.learn.add_cbs(cb)
        else:
            self.learn.add_cbs(cb)
            self.model.append(cb)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data):
        cb = data.draw(st.sampled_from(self.model))
        self.learn.remove_cbs(cb)
        self.model.remove(cb)
        assert cb.learn is None

    @rule(per_fit=st.lists(st.tuples(st.sampled_from(NAMES), ORDERS), max_size=3, unique_by=lambda t: t[0]),
          fail=st.booleans())  # fmt: skip
    def fit(self, per_fit, fail):
        extra = [Logged(f"fit_{name}", order, self.log) for name, order in per_fit]
        if fail and extra:
            extra[-1].fail = True
        self.log.clear()
        if fail and extra:
            with pytest.raises(RuntimeError, match="per-fit callback failed"):
                self.learn.fit(1, cbs=extra)
        else:
            self.learn.fit(1, cbs=extra)
        assert self.log == [cb.name for cb in stable_sorted(self.model + extra)]
        assert all(cb.learn is None for cb in extra)

    @rule(name=st.sampled_from(NAMES), order=ORDERS)
    def added_temporarily(self, name, order):
        cb = Logged(f"tmp_{name}", order, self.log)
        with self.learn.added_cbs(cb):
            assert getattr(self.learn, cb.name) is cb
        assert cb.learn is None

    @invariant()
    def order_is_a_stable_sort(self):
        assert isinstance(self.learn.cbs[0], TrainEval)
        assert self.learn.cbs[1:] == stable_sorted(self.model)

    @invariant()
    def names_resolve(self):
        for cb in self.model:
            assert getattr(self.learn, cb.name) is cb
        for name in set(NAMES) - self.taken():
            with pytest.raises(AttributeError):
                getattr(self.learn, name)

    @invariant()
    def dispatch_matches_the_order(self):
        assert [cb for cb, _ in self.learn._dispatch["before_fit"]][1:] == stable_sorted(self.model)


LearnerCallbacks.TestCase.settings = settings(max_examples=30, stateful_step_count=15, deadline=None)
TestLearnerCallbacks = LearnerCallbacks.TestCase
