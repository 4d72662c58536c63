"""Distributed training on 2 CPU processes (gloo over 127.0.0.1), launched by torchrun.

Every launch has a timeout, so a hang fails the test instead of the CI run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loopkit.callbacks import ShardBatchSampler
from tests.callbacks.dist_job import build, data

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TIMEOUT = 150


def torchrun(mode: str, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests.callbacks.dist_job", mode, str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MASTER_ADDR": "127.0.0.1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def launched(mode: str, out: Path) -> list[dict]:
    proc = torchrun(mode, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [torch.load(out / f"result_rank{r}.pt", weights_only=True) for r in (0, 1)]


def assert_same_params(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_shard_sampler_sees_every_sample_once_with_equal_batch_counts():
    for n, bs, world in [(37, 4, 2), (33, 4, 2), (10, 3, 3), (7, 1, 4), (5, 8, 2)]:
        shards = [ShardBatchSampler(n, bs, world, r, shuffle=True, seed=1) for r in range(world)]
        for s in shards:
            s.set_epoch(2)
        batches = [list(s) for s in shards]
        assert len({len(b) for b in batches}) == 1
        assert all(len(batch) >= 1 for rank_batches in batches for batch in rank_batches)
        assert sorted(i for b in batches for batch in b for i in batch) == list(range(n))
    with pytest.raises(ValueError, match="cannot shard 1 samples over 2"):
        ShardBatchSampler(1, 4, 2, 0)


def test_two_ranks_match_one_process_with_the_global_batch(tmp_path):
    rank0, rank1 = launched("equiv", tmp_path)
    assert rank0["plain"] == "Sequential"  # unwrapped after the fit
    assert_same_params(rank0["params"], rank1["params"])
    single = build("equiv", bs=8, distributed=False)
    single.fit(2)
    assert_same_params(rank0["params"], [p.detach() for p in single.model.parameters()])


@pytest.mark.parametrize("mode, single_batches", [("stats", None), ("merge", [8, 8, 8, 9])])
def test_global_stats_equal_the_single_process_figures_on_odd_sizes(tmp_path, mode, single_batches):
    rank0, rank1 = launched(mode, tmp_path)
    single = build(mode, bs=8, distributed=False)
    if single_batches is not None:  # the last global batch of 1 sample is merged into the previous one
        train, _ = data(mode)
        x, y = train.tensors
        single.train_dl = list(zip(x.split(single_batches), y.split(single_batches)))
    single.fit(2)
    for got, want in zip(rank0["history"], single.avg_stats.history):
        assert got.keys() == want.keys()
        for key in got:
            assert got[key] == pytest.approx(want[key], rel=1e-9), key
    assert rank1["history"] == rank0["history"]
    assert_same_params(rank0["params"], [p.detach() for p in single.model.parameters()])


def test_stateful_metrics_under_ddp_equal_the_single_process_figures_counting_each_sample_once(tmp_path):
    pytest.importorskip("torchmetrics")
    rank0, rank1 = launched("metrics", tmp_path)
    single = build("metrics", bs=8, distributed=False)
    single.fit(2)
    for got, want in zip(rank0["history"], single.avg_stats.history):
        assert got.keys() == want.keys()
        assert got == pytest.approx(want, rel=1e-6)
        assert (got["train_count_samples"], got["count_samples"]) == (37, 23)  # gathered once, not twice
    assert rank1["history"] == rank0["history"]
    # a sharded evaluation gathers; one where every rank sees all the data must not
    want = single.validate().metrics
    for rank in (rank0, rank1):
        assert rank["sharded"] == pytest.approx(want, rel=1e-6)
        assert rank["whole"] == pytest.approx(want, rel=1e-6)
    assert rank0["whole"]["count_samples"] == 23


def test_accumulation_under_ddp_matches_one_process_and_syncs_once_per_window(tmp_path):
    from loopkit.callbacks import GradientAccumulation

    rank0, rank1 = launched("accum", tmp_path)
    single = build("accum", bs=8, distributed=False, cbs=[GradientAccumulation(20)])
    single.fit(2)
    # global micro-batches of 8, 8, 8, 8, 5: windows [8, 8, 8] and [8, 5], so 2 steps an epoch
    assert rank0["n_steps"] == single.gradient_accumulation.n_steps == 4
    assert rank0["n_all_reduces"] == rank1["n_all_reduces"] == 4  # not 10: no all-reduce inside a window
    assert_same_params(rank0["params"], [p.detach() for p in single.model.parameters()])
    for got, want in zip(rank0["history"], single.avg_stats.history):
        assert got == pytest.approx(want, rel=1e-9)


def test_several_fits_in_one_job_and_restore_best_agree_across_ranks(tmp_path):
    rank0, rank1 = launched("twice", tmp_path)
    assert rank0["found"] == rank1["found"] and rank0["restored"] and rank1["restored"]  # lr_find, then fits
    assert rank0["plain"] == "Sequential" and len(rank0["history"]) == 1
    assert_same_params(rank0["params"], rank1["params"])


def test_rank_zero_alone_writes_and_a_two_rank_resume_continues_exactly(tmp_path):
    straight = tmp_path / "straight"
    straight.mkdir()
    rank0, _ = launched("io", straight)
    assert sorted(p.name for p in straight.iterdir() if not p.name.startswith("result")) == [
        "ckpt.pt", "ckpt_epoch0.pt", "ckpt_epoch1.pt", "ckpt_epoch2.pt", "ckpt_epoch3.pt", "history.csv"]  # fmt: skip
    lines = (straight / "history.csv").read_text().splitlines()
    assert len(lines) == 5  # one header, four epochs: no second writer
    ckpt = torch.load(straight / "ckpt_epoch1.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"]) and len(ckpt["rng_ranks"]) == 2
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "ckpt_epoch1.pt").write_bytes((straight / "ckpt_epoch1.pt").read_bytes())
    (resumed / "history.csv").write_text("\n".join(lines[:3]) + "\n")
    again, _ = launched("resume", resumed)
    assert_same_params(again["params"], rank0["params"])
    assert again["history"] == rank0["history"]
    assert (resumed / "history.csv").read_text() == (straight / "history.csv").read_text()


def test_evaluations_give_global_figures_and_every_sample_once_in_order_on_every_rank(tmp_path):
    rank0, rank1 = launched("eval", tmp_path)
    assert_same_params(rank0["params"], rank1["params"])
    single = build("eval", bs=8, distributed=False)
    with torch.no_grad():
        for p, q in zip(single.model.parameters(), rank0["params"]):
            p.copy_(q)
    loss, metrics, count = rank0["stats"]
    want = single.validate()
    assert count == want.count == 23 and rank1["stats"] == rank0["stats"]
    assert loss == pytest.approx(want.loss, rel=1e-9) and metrics == pytest.approx(want.metrics, rel=1e-9)
    inp, pred, targ, losses = single.get_preds(with_input=True, with_loss=True)
    _, valid = data("eval")
    assert torch.equal(inp, valid.tensors[0]) and torch.equal(targ, valid.tensors[1])  # dataset order, no duplicates
    for rank in (rank0, rank1):
        assert torch.equal(rank["inp"], inp) and torch.equal(rank["targ"], targ)
        torch.testing.assert_close(rank["pred"], pred, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rank["losses"], losses, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rank["predict_out"], single.model(rank["predict_in"]).detach())
        assert rank["n_history"] == 1 and rank["train_dl"] == "DataLoader" and rank["plain"] == "Sequential"
    assert len(rank1["predict_out"]) == 4  # its own batch, not gathered


def test_a_cancel_on_one_rank_stops_every_rank(tmp_path):
    rank0, rank1 = launched("stop", tmp_path)
    # rank 1 cancelled at epoch 1, batch 2; rank 0 met it at that batch's agreement.
    assert rank0["train_iter"] == rank1["train_iter"] == 5 + 2
    assert len(rank0["history"]) == len(rank1["history"]) == 1


def test_a_stop_decided_on_one_rank_in_after_epoch_ends_every_rank_after_the_same_epochs(tmp_path):
    rank0, rank1 = launched("stop_epoch", tmp_path)
    # Epochs 0 and 1 ran everywhere; rank 1 did not start epoch 2 of the 4-epoch fit. Then a
    # 2-epoch fit stopped by rank 0 after its last epoch ended without anyone waiting.
    assert rank0["n_started"] == rank1["n_started"] == (2, 2)
    assert len(rank0["history"]) == len(rank1["history"]) == 2


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_batch_with_one_checkpoint(tmp_path):
    rank0, rank1 = launched("preempt", tmp_path)
    assert rank1["received"] == str(int(signal.SIGTERM)) and rank0["received"] == "None"  # only rank 1 got it
    assert rank0["train_iter"] == rank1["train_iter"] == 3  # both stopped after the batch it arrived in
    assert rank0["saved"] == rank1["saved"] == str(tmp_path / "preempted.pt")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("result")) == ["preempted.pt"]
    assert torch.load(tmp_path / "preempted.pt", weights_only=True)["train_iter"] == 3
    assert_same_params(rank0["params"], rank1["params"])


def test_an_error_on_one_rank_ends_the_job_with_its_traceback(tmp_path):
    proc = torchrun("error", tmp_path)
    assert proc.returncode != 0
    assert "raised on purpose by RaiseOnRank" in proc.stdout + proc.stderr
    left = subprocess.run(["pgrep", "-f", f"dist_job error {tmp_path}"], capture_output=True, text=True)
    assert left.stdout.strip() == ""


def test_a_tensor_loader_shards_into_the_same_batches_as_a_dataloader():
    from torch.utils.data import DataLoader, TensorDataset

    from loopkit import TensorLoader
    from loopkit.callbacks.distributed import shard_loader

    x = torch.arange(37.0).unsqueeze(1)
    y = torch.arange(37) % 2
    for shuffle, drop_last in [(True, False), (False, False), (True, True)]:
        tensors = TensorLoader((x, y), bs=4, shuffle=shuffle, drop_last=drop_last, seed=7)
        torch_dl = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=shuffle, drop_last=drop_last,
                              generator=torch.Generator().manual_seed(7))  # fmt: skip
        ranks = []
        for rank in (0, 1):
            shard, torch_shard = shard_loader(tensors, 2, rank, None, "train"), shard_loader(torch_dl, 2, rank, None, "train")
            for loader in (shard, torch_shard):
                loader.batch_sampler.set_epoch(3)
            got = [xb.squeeze(1).long().tolist() for xb, _ in shard]
            assert got == [xb.squeeze(1).long().tolist() for xb, _ in torch_shard] and len(got) == len(shard)
            ranks.append(got)
        assert len(ranks[0]) == len(ranks[1])
        ids = sorted(i for rank in ranks for batch in rank for i in batch)
        # every sample once, no padding duplicates; drop_last drops the short last global batch (5 of 37)
        assert len(ids) == len(set(ids)) == (32 if drop_last else 37) and set(ids) <= set(range(37))


def test_two_ranks_train_and_evaluate_over_tensor_loaders_as_over_dataloaders(tmp_path):
    rank0, rank1 = launched("tensor", tmp_path)
    for rank in (rank0, rank1):
        for got, want in zip(rank["params"], rank["torch_params"]):
            assert torch.equal(got, want)  # the same global batches as DataLoaders, bitwise
        assert rank["history"] == rank["torch_history"] and rank["train_dl"] == "TensorLoader"
    for role in (0, 1):  # train and valid shards: equal batch counts, every sample once
        assert len(rank0["shards"][role]) == len(rank1["shards"][role])
        split = data("tensor")[role].tensors[0][:, 0].tolist()
        assert sorted(v for rank in (rank0, rank1) for batch in rank["shards"][role] for v in batch) == sorted(split)
    single = build("tensor", bs=8, distributed=False, tensor_loader=True)
    with torch.no_grad():
        for p, q in zip(single.model.parameters(), rank0["params"]):
            p.copy_(q)
    inp, pred, targ = single.get_preds(with_input=True)
    _, valid = data("tensor")
    assert torch.equal(inp, valid.tensors[0]) and torch.equal(targ, valid.tensors[1])
    for rank in (rank0, rank1):  # the gathered shards, back in the loader's order
        assert torch.equal(rank["inp"], inp) and torch.equal(rank["targ"], targ)
        torch.testing.assert_close(rank["pred"], pred, rtol=1e-12, atol=1e-12)
        assert rank["stats"][2] == 23 and rank["stats"][0] == pytest.approx(single.validate().loss, rel=1e-9)
