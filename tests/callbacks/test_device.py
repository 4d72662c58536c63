"""Device, to_device, pick_device: the model, its optimizer state and every batch land on the device.

Without a GPU the moves are checked with torch's 'meta' device, which every build
has: a tensor moved there visibly changes device.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict, namedtuple
from functools import partial
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loopkit import Callback, Learner
from loopkit.callbacks import Device, Prefetcher, pick_device, to_device
from tests.conftest import make_data, tiny_model

Pair = namedtuple("Pair", ["image", "label"])


def test_to_device_walks_nested_containers_and_keeps_other_leaves():
    name, scale, extra = "sample-7", 0.5, object()
    factory = defaultdict(list, {"t": torch.ones(2)})
    batch = (
        [torch.zeros(3), {"mask": torch.ones(3, dtype=torch.bool), "name": name}],
        Pair(torch.ones(2, 2), 3),
        OrderedDict(a=torch.arange(4), b=(scale, extra, None)),
        factory,
    )
    moved = to_device(batch, "meta")
    (first, info), pair, ordered, fac = moved
    assert type(moved) is tuple and type(moved[0]) is list
    assert first.device.type == "meta" and info["mask"].device.type == "meta" and info["mask"].dtype == torch.bool
    assert info["name"] is name
    assert type(pair) is Pair and pair.image.device.type == "meta" and pair.label == 3
    assert type(ordered) is OrderedDict and list(ordered) == ["a", "b"] and ordered["a"].device.type == "meta"
    assert ordered["b"][0] is scale and ordered["b"][1] is extra and ordered["b"][2] is None
    assert type(fac) is defaultdict and fac.default_factory is list and fac["t"].device.type == "meta"
    # the input is left as it was
    assert batch[0][0].device.type == "cpu" and factory["t"].device.type == "cpu"


def test_to_device_does_not_copy_a_tensor_already_there():
    t = torch.randn(3)
    assert to_device(t, "cpu") is t
    assert to_device([t], torch.device("cpu"))[0] is t


class Where(Callback):
    """Record the devices of the batch, its parts and the model as the forward pass sees them."""

    order = 1000

    def before_fit(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def after_pred(self) -> None:
        xb, yb = self.xb[0], self.yb[0]
        self.seen.append((self.batch[0]["x"].device.type, xb["x"].device.type, yb.device.type,
                          next(self.model.parameters()).device.type, xb["id"]))  # fmt: skip


class DictInput(nn.Module):
    """A model whose input is a dict, as a batch from a dataset of records would be."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = tiny_model()

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.linear(inputs["x"])


def test_device_moves_model_and_every_batch_including_xb_and_yb():
    x, y = make_data(8)
    train = [({"x": x[:4], "id": "a"}, y[:4]), ({"x": x[4:], "id": "b"}, y[4:])]
    where = Where()
    # lr=0: SGD on the 'meta' device updates nothing, only the devices matter here.
    learn = Learner(DictInput(), (train, train[:1]), F.cross_entropy, lr=0.0, default_cbs=False,
                    cbs=[Device("meta"), where])  # fmt: skip
    learn.fit(1)
    assert where.seen == [("meta", "meta", "meta", "meta", "a"), ("meta", "meta", "meta", "meta", "b"),
                          ("meta", "meta", "meta", "meta", "a")]  # fmt: skip
    assert train[0][0]["x"].device.type == "cpu"  # the loader's own tensors are not changed


def test_optimizer_state_moves_with_the_model():
    x, y = make_data(8)
    adam = partial(torch.optim.Adam)
    learn = Learner(tiny_model(), ([(x, y)], None), F.cross_entropy, opt_func=adam, default_cbs=False)
    learn.fit(1)  # on the CPU: Adam's moments now exist there
    learn.fit(1, cbs=[Device("meta")])
    params = list(learn.model.parameters())
    assert all(p.device.type == "meta" for p in params)
    assert all(a is b for a, b in zip(learn.opt.param_groups[0]["params"], params))  # the optimizer updates them
    for p in params:
        state = learn.opt.state[p]
        assert state["exp_avg"].device.type == "meta" and state["exp_avg_sq"].device.type == "meta"
        assert state["step"].item() == 2  # one step per fit, and the counter stays on the CPU


def test_learner_device_argument_adds_device():
    x, y = make_data(8)
    dls = ([(x, y)], None)
    assert not any(isinstance(cb, Device) for cb in Learner(tiny_model(), dls, F.cross_entropy).cbs)
    learn = Learner(tiny_model(), dls, F.cross_entropy, device="auto")
    assert learn.device.device == pick_device() and learn.device.order == -90
    assert Learner(tiny_model(), dls, F.cross_entropy, device="cpu").device.device == torch.device("cpu")


def test_pick_device_defaults_and_errors():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device().type == expected and pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="'gpu' is not a device torch knows"):
        Device("gpu")
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=f"this machine has {n_gpus} CUDA device"):
        pick_device(f"cuda:{n_gpus}")
    with pytest.raises(ValueError, match=f"this machine has {n_gpus} CUDA device"):
        pick_device(n_gpus)


@pytest.mark.parametrize("pinned", [True, False])
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_copies_to_cuda_are_non_blocking_only_from_pinned_memory(pinned):
    x = torch.randn(64, 4)
    source = x.pin_memory() if pinned else x.clone()
    calls = []
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("non_blocking"))
        return real_to(self, *args, **kwargs)

    with mock.patch.object(torch.Tensor, "to", spy):  # spies on torch, not on the unit under test
        moved = to_device({"x": source}, "cuda")["x"]
        back = to_device(moved, "cpu")
    torch.cuda.synchronize()
    assert moved.device.type == "cuda" and torch.equal(back, x)
    assert calls == [pinned, False]  # device-to-host copies are never asynchronous


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda_from_a_pinned_loader_matches_the_cpu_fit():
    from torch.utils.data import DataLoader, TensorDataset

    x, y = make_data(64)
    results = []
    for device, pin in (("cpu", False), ("cuda", True)):
        dl = DataLoader(TensorDataset(x, y), batch_size=16, pin_memory=pin)
        learn = Learner(tiny_model(), (dl, dl), F.cross_entropy, lr=0.1, device=device)
        learn.progress_bar.enabled = False
        learn.fit(2)
        assert next(learn.model.parameters()).device.type == device
        results.append(learn.model.weight.detach().cpu())
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)


class Wrap(Callback):
    """Wrap each phase's loader in a Prefetcher whose moves are logged, as Device does on CUDA."""

    order = -90

    def __init__(self, log):
        self.log = log

    def start(self, batch):
        self.log.append(("start", int(batch[0][0, 0])))
        return batch

    def finish(self, handle):
        self.log.append(("finish", int(handle[0][0, 0])))
        return handle

    def before_train(self):
        self.learn.dl = Prefetcher(self.learn.dl, self.start, self.finish)

    def after_pred(self):
        self.log.append(("step", int(self.learn.xb[0][0, 0])))


def numbered_batches(n):
    # Batch k's first input is k, so the log names batches.
    return [(torch.full((2, 4), float(k)), torch.zeros(2, dtype=torch.long)) for k in range(n)]


def test_prefetcher_starts_each_copy_before_the_previous_batch_trains():
    log = []
    learn = Learner(tiny_model(), (numbered_batches(3), None), F.cross_entropy, default_cbs=False, cbs=[Wrap(log)])
    learn.fit(1)
    assert log == [("start", 0), ("finish", 0), ("start", 1), ("step", 0),
                   ("finish", 1), ("start", 2), ("step", 1),
                   ("finish", 2), ("step", 2)]  # fmt: skip


def test_prefetcher_keeps_order_length_and_starts_mid_epoch():
    batches = numbered_batches(5)
    log = []
    fetch = Prefetcher(batches, lambda b: log.append("start") or b, lambda h: h)
    assert len(fetch) == 5 and [int(b[0][0, 0]) for b in fetch] == [0, 1, 2, 3, 4]
    assert [int(b[0][0, 0]) for b in fetch.iter_from(3)] == [3, 4]
    assert log == ["start"] * 7
    assert list(Prefetcher([], lambda b: b, lambda h: h)) == []


def test_prefetched_fit_resumes_mid_epoch_exactly(tmp_path):
    from loopkit.callbacks import SaveModel

    from loopkit import CancelFit

    x, y = make_data(48)
    x[:, 0] = torch.arange(48) // 8  # batch k's first input is k, for the log
    batches = list(zip(x.split(8), y.split(8)))  # 6 batches an epoch

    class Die(Callback):  # the job dies a batch after the checkpoint
        def after_batch(self):
            if self.learn.train_iter == 5:
                raise CancelFit

    def learner():
        torch.manual_seed(0)
        learn = Learner(tiny_model(), (batches, None), F.cross_entropy, lr=0.1)
        learn.progress_bar.enabled = False
        return learn

    whole = learner()
    whole.fit(2, cbs=[Wrap([])])
    part = learner()
    saver = SaveModel("train_loss", path=tmp_path / "m.pt", every_n_batches=4)
    part.fit(2, cbs=[Wrap([]), saver, Die()])
    log = []
    resumed = learner()
    resumed.fit(2, cbs=[Wrap(log), SaveModel("train_loss", path=tmp_path / "m.pt", every_n_batches=4)],
                resume=tmp_path / "m_epoch0_batch4.pt")  # fmt: skip
    assert [k for event, k in log if event == "step"] == [4, 5, 0, 1, 2, 3, 4, 5]
    assert torch.equal(resumed.model.weight, whole.model.weight)


def test_device_wraps_loaders_only_on_cuda():
    seen = []

    class Look(Callback):
        def before_batch(self):
            seen.append(self.learn.dl)

    batches = numbered_batches(2)
    learn = Learner(tiny_model(), (batches, batches), F.cross_entropy, default_cbs=False, cbs=[Device("cpu"), Look()])
    learn.fit(1)
    assert all(dl is batches for dl in seen) and len(seen) == 4
    assert repr(Device("cpu", prefetch=False)) == "Device('cpu', prefetch=False)"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prefetched_cuda_fit_equals_the_unprefetched_one_and_copies_on_the_side_stream():
    from torch.utils.data import DataLoader, TensorDataset

    x, y = make_data(256)
    weights, streams = [], []
    for prefetch in (False, True):
        dl = DataLoader(TensorDataset(x, y), batch_size=16, pin_memory=True)
        torch.manual_seed(0)
        learn = Learner(tiny_model(), (dl, dl), F.cross_entropy, lr=0.1, default_cbs=False,
                        cbs=[Device("cuda", prefetch=prefetch)])  # fmt: skip

        class Seen(Callback):
            def before_batch(self):
                streams.append((prefetch, isinstance(self.learn.dl, Prefetcher)))

        learn.fit(2, cbs=[Seen()])
        torch.cuda.synchronize()
        weights.append(learn.model.weight.detach().cpu())
    assert torch.equal(weights[0], weights[1])
    assert {wrapped for prefetch, wrapped in streams if prefetch} == {True}
    assert {wrapped for prefetch, wrapped in streams if not prefetch} == {False}
