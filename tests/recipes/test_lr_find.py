"""recipes/lr_find.py: the LR finder's plot, then fit_one_cycle at its suggestion."""

from __future__ import annotations

from tests.recipes.conftest import read_metrics, run_recipe


def test_lr_find_trains_at_the_suggestion_and_writes_its_files(default_run):
    final, out = default_run("lr_find")
    assert final["accuracy"] >= 0.97
    assert 1e-3 < final["lr"] < 10
    names = ["confusion.png", "loss.png", "lr_find.png", "metrics.csv", "model.pt", "sched.png"]
    assert sorted(p.name for p in out.iterdir()) == names
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_metrics(out)
    assert [row["epoch"] for row in rows] == list(range(8))  # the sweep is not in the history
    assert rows[-1] == {"epoch": 7.0, **{k: v for k, v in final.items() if k != "lr"}}  # validate() = last row


def test_lr_find_leaves_the_fit_as_if_no_sweep_had_run(tmp_path):
    # The sweep restores weights, optimizer and RNG states, so the fit after it is the
    # cnn recipe's fit at the suggested lr, to the last bit.
    found = run_recipe("lr_find", ["--epochs", "2", "--out", str(tmp_path / "found")])
    direct = run_recipe("cnn", ["--epochs", "2", "--lr", repr(found["lr"]), "--out", str(tmp_path / "cnn")])
    assert {k: v for k, v in found.items() if k != "lr"} == direct


def test_lr_flag_overrides_the_suggestion_and_runs_repeat(tmp_path):
    first = run_recipe("lr_find", ["--epochs", "1", "--lr", "0.05", "--out", str(tmp_path / "a")])
    again = run_recipe("lr_find", ["--epochs", "1", "--lr", "0.05", "--out", str(tmp_path / "b")])
    assert first["lr"] == 0.05 and first == again
