"""recipes/activations.py: the init story, told by ActivationStats."""

from __future__ import annotations

from tests.recipes.conftest import run_recipe


def test_default_init_leaves_more_activations_near_zero_than_kaiming_or_batchnorm(tmp_path, capsys):
    results = run_recipe("activations", ["--epochs", "1", "--out", str(tmp_path)])
    # Deep layers of the default init start with tiny activations; Kaiming and batchnorm keep
    # about the half a ReLU zeroes.
    assert results["default_near_zero"] > results["kaiming_near_zero"] + 0.1
    assert results["default_near_zero"] > results["batchnorm_near_zero"] + 0.1
    assert 0.4 < results["batchnorm_near_zero"] < 0.65
    assert results["batchnorm_accuracy"] > results["default_accuracy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{case}_{plot}.png" for case in ("default", "kaiming", "batchnorm") for plot in ("color_dim", "stats", "dead")
    )
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[:3]] == ["default", "kaiming", "batchnorm"]
    assert f"mean {results['default_near_zero']:4.0%}" in out[0]
