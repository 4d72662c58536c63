"""recipes/digits.py: the MLP that README points at."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from loopkit import digits
from tests.recipes.conftest import read_metrics, run_recipe
from tests.test_data import mnist_tensors, write_folders, write_mnist

ROOT = Path(__file__).resolve().parents[2]


def test_digits_meets_its_floor_and_writes_its_files(default_run):
    final, out = default_run("digits")
    assert final["accuracy"] >= 0.95
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "loss.png", "metrics.csv", "model.pt"]
    # final comes from learn.validate(): the same model on the same loader as the last history row.
    assert read_metrics(out)[-1] == {"epoch": 9.0, **final}
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # model.pt holds the final weights: reloaded, they score the reported accuracy.
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 10))
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    x, y = digits().valid
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean().item() == pytest.approx(final["accuracy"], abs=1e-6)


def test_digits_prints_the_epoch_table_and_final_figures(tmp_path, capsys):
    final = run_recipe("digits", ["--epochs", "2", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert [line.split()[0] for line in lines[1:3]] == ["0", "1"]
    assert f"final valid_loss {final['valid_loss']:.4f}  accuracy {final['accuracy']:.4f}" in lines
    assert any(line.startswith("most confused (actual as predicted): ") for line in lines)


def test_digits_same_seed_same_numbers(tmp_path):
    first = run_recipe("digits", ["--epochs", "2", "--out", str(tmp_path / "a")])
    again = run_recipe("digits", ["--epochs", "2", "--out", str(tmp_path / "b")])
    other = run_recipe("digits", ["--epochs", "2", "--seed", "1", "--out", str(tmp_path / "c")])
    assert first == again and read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    assert other != first


@pytest.mark.parametrize("layout", ["mnist_idx", "image_folder"])
def test_digits_trains_on_data_from_a_folder(tmp_path, layout):
    if layout == "mnist_idx":
        write_mnist(tmp_path / "data", gz=True)
        n_valid, n_pixels, n_classes = len(mnist_tensors()["t10k-labels-idx1-ubyte"]), 20, 10
    else:
        write_folders(tmp_path / "data", {"train": {"3": 4, "7": 4}, "valid": {"3": 2, "7": 3}}, size=(6, 5))
        n_valid, n_pixels, n_classes = 5, 30, 2
    final = run_recipe("digits", ["--data", str(tmp_path / "data"), "--epochs", "2", "--out", str(tmp_path / "out")])
    assert read_metrics(tmp_path / "out")[-1]["accuracy"] == final["accuracy"]
    # Scored the folder's valid images: the accuracy is a count out of n_valid.
    assert final["accuracy"] * n_valid == pytest.approx(round(final["accuracy"] * n_valid))
    weights = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert weights["1.weight"].shape == (100, n_pixels) and weights["3.weight"].shape == (n_classes, 100)


def test_digits_runs_from_a_checkout_and_as_a_module(tmp_path):
    script = subprocess.run([sys.executable, str(ROOT / "recipes" / "digits.py"), "--help"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert "--epochs" in script.stdout and "--data PATH" in script.stdout
    module = subprocess.run([sys.executable, "-m", "loopkit.recipes.digits", "--epochs", "1", "--out", str(tmp_path)],
                            capture_output=True, text=True, check=True, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert "final valid_loss" in module.stdout and (tmp_path / "model.pt").is_file()


def test_accumulate_trains_like_the_bigger_batch(tmp_path):
    # The loader draws the same permutation whatever --bs is, so windows of 64 samples made of
    # micro-batches of 16 hold exactly the samples of the batches of 64.
    big = run_recipe("digits", ["--epochs", "2", "--bs", "64", "--out", str(tmp_path / "big")])
    windows = run_recipe("digits", ["--epochs", "2", "--bs", "16", "--accumulate", "64", "--out", str(tmp_path / "acc")])
    small = run_recipe("digits", ["--epochs", "2", "--bs", "16", "--out", str(tmp_path / "small")])
    assert windows == pytest.approx(big, rel=1e-4)
    assert small != pytest.approx(big, rel=1e-2)  # without accumulation, batches of 16 train differently


def test_amp_bf16_meets_the_floor(tmp_path):
    plain = run_recipe("digits", ["--epochs", "3", "--out", str(tmp_path / "fp32")])
    mixed = run_recipe("digits", ["--epochs", "3", "--amp", "bf16", "--out", str(tmp_path / "bf16")])
    assert mixed["accuracy"] >= 0.95
    assert mixed["valid_loss"] != plain["valid_loss"]  # autocast did run


def test_device_flag_reaches_the_device_callback(tmp_path):
    with pytest.raises(ValueError, match="'nonsense' is not a device torch knows"):
        run_recipe("digits", ["--device", "nonsense", "--out", str(tmp_path)])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_digits_on_cuda_meets_the_floor(tmp_path, amp):
    argv = ["--device", "cuda", "--out", str(tmp_path)] + (["--amp", amp] if amp else [])
    final = run_recipe("digits", argv)
    assert final["accuracy"] >= 0.95
    assert torch.load(tmp_path / "model.pt", weights_only=True)["1.weight"].device.type == "cpu"


@pytest.mark.slow
def test_digits_under_torchrun_writes_its_outputs_once_and_meets_the_floor(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "recipes" / "digits.py"), "--out", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("final valid_loss") == 1  # rank 0 alone reports and writes
    rows = read_metrics(tmp_path)
    assert [row["epoch"] for row in rows] == [float(e) for e in range(len(rows))] and len(rows) > 1
    assert rows[-1]["accuracy"] >= 0.95  # the single-process floor, with 2 ranks on gloo
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "loss.png").is_file()
    assert (tmp_path / "confusion.png").is_file()
    # Every rank ran learn.validate() (a collective); its global figures are the last row's.
    assert f"final valid_loss {rows[-1]['valid_loss']:.4f}  accuracy {rows[-1]['accuracy']:.4f}" in proc.stdout
