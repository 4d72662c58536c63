"""ActivationStats: the recorded statistics equal a hand computation, on the device, read once per epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from loopkit import Learner
from loopkit.callbacks import ActivationStats
from tests.callbacks.test_stats import count_syncs
from tests.conftest import batches_of, make_data


def model_and_learner(n_train: int = 3, n_valid: int = 2, bs: int = 4, cbs=(), **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = make_data(bs * (n_train + n_valid))
    x = x * 3  # activations spread over several histogram bins
    train = batches_of(x[: bs * n_train], y[: bs * n_train], [bs] * n_train)
    valid = batches_of(x[bs * n_train :], y[bs * n_train :], [bs] * n_valid)
    learn = Learner(model, (train, valid), F.cross_entropy, lr=0.5, default_cbs=False, cbs=list(cbs), **kwargs)
    return model, learn


def by_hand(a: np.ndarray, bins: int, hist_max: float, near_zero: float) -> np.ndarray:
    size = np.abs(a)
    hist, _ = np.histogram(size, bins=bins, range=(0, hist_max))
    return np.array([a.mean(), a.std(ddof=1), (size <= near_zero).mean(), *hist])


@pytest.mark.parametrize("every", [1, 2])
def test_statistics_equal_a_hand_computation_on_training_batches(every):
    stats = ActivationStats(modules=["0", "1"], every=every, bins=8, hist_max=4.0, near_zero=0.1)
    model, learn = model_and_learner(cbs=[stats])
    outputs: dict[str, list[np.ndarray]] = {"0": [], "1": []}
    # An independent record of the same outputs, by raw torch hooks, training batches only.
    for name in outputs:
        model.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: outputs[name].append(o.detach().numpy().copy()) if m.training else None
        )
    learn.fit(2)  # 6 training batches, train_iter 0..5
    kept = list(range(0, 6, every))
    assert stats.layers == ["0", "1"]
    for name in ("0", "1"):
        expected = np.stack([by_hand(outputs[name][i], 8, 4.0, 0.1) for i in kept])
        got = torch.cat([stats.means[name][:, None], stats.stds[name][:, None],
                         stats.near_zero_fractions[name][:, None], stats.hists[name]], dim=1)  # fmt: skip
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
        assert stats.iters[name] == kept
    assert stats.hists["1"].shape == (len(kept), 8)
    assert stats.near_zero_fractions["1"].min() > 0.2  # the ReLU zeroes about half: the figure is not trivially 0


def test_default_hooks_leaf_modules_with_parameters_and_each_fit_starts_afresh():
    stats = ActivationStats()
    _, learn = model_and_learner(cbs=[stats])
    learn.fit(1)
    assert stats.layers == ["0", "2"] and len(stats.iters["0"]) == 3
    learn.fit(2)
    assert stats.iters["0"] == list(range(6))


@pytest.mark.parametrize("n_batches", [10, 40])
def test_no_host_sync_per_batch(monkeypatch, n_batches):
    stats = ActivationStats()
    _, learn = model_and_learner(n_train=n_batches, n_valid=2, cbs=[stats])
    learn.fit(1)  # warm-up outside the count
    counts = count_syncs(monkeypatch)
    learn.fit(3)
    assert sum(counts.values()) <= 3, counts  # one read per epoch
    monkeypatch.undo()
    assert len(stats.iters["0"]) == 3 * n_batches and stats.means["0"].isfinite().all()


def test_evaluations_record_nothing_and_keep_the_fits_record():
    stats = ActivationStats()
    model, learn = model_and_learner(cbs=[stats])
    learn.fit(1)
    means = stats.means["0"].clone()
    learn.validate()
    learn.get_preds()
    assert torch.equal(stats.means["0"], means)
    # Reads torch's private hook dict on purpose: it is the only record of what is registered.
    assert all(not m._forward_hooks for m in model.modules())


def test_plots_return_figures_and_save(tmp_path):
    stats = ActivationStats(modules=nn.ReLU)
    _, learn = model_and_learner(cbs=[stats])
    with pytest.raises(ValueError, match="nothing recorded yet"):
        stats.plot_color_dim()
    learn.fit(2)
    fig = stats.plot_color_dim(path=tmp_path / "color.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 1 and (tmp_path / "color.png").stat().st_size > 0
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (40, 6)  # bins x recorded batches
    np.testing.assert_allclose(image, stats.hists["1"].T.log1p().numpy())
    assert len(stats.plot_stats(path=tmp_path / "stats.png").axes) == 2
    dead = stats.plot_dead(path=tmp_path / "dead.png")
    np.testing.assert_allclose(dead.axes[0].lines[0].get_ydata(), stats.near_zero_fractions["1"].numpy())
    assert {p.name for p in tmp_path.iterdir()} == {"color.png", "stats.png", "dead.png"}


def test_a_module_without_a_tensor_output_is_a_clear_error():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x), x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            return self.pair(x)[0]

    x, y = make_data(8)
    learn = Learner(Net(), (batches_of(x, y, [4, 4]), None), F.cross_entropy, default_cbs=False,
                    cbs=[ActivationStats(modules="pair")])  # fmt: skip
    with pytest.raises(TypeError, match="module 'pair' \\(Pair\\) returned a tuple, not a tensor"):
        learn.fit(1)


@pytest.mark.parametrize("kwargs", [dict(every=0), dict(bins=0), dict(hist_max=0.0), dict(near_zero=-1.0)])
def test_bad_arguments_are_errors(kwargs):
    with pytest.raises(ValueError, match="ActivationStats: "):
        ActivationStats(**kwargs)
