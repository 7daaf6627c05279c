"""The σ sweep end to end on a small budget, and its parts."""

import json

import numpy as np
import pytest
import torch

from ppl_vae.cli import main
from ppl_vae.errors import UserError
from ppl_vae.studies.sweep import parse_sigmas, ppca_active_units


def test_sigma_sweep_writes_table_and_figures(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = [
        "sigma-sweep",
        "--sigmas",
        "0.1,0.4",
        "--epochs",
        "3",
        "--hidden-dim",
        "32",
        "--k",
        "20",
        "--points",
        "60",
        "--gap-points",
        "5",
        "--sbc-simulations",
        "50",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["sigma"] for r in rows] == [0.1, 0.4]
    for r in rows:
        assert r["beta_equivalent"] == pytest.approx(2 * r["sigma"] ** 2)
        assert (
            r["identity_posterior_sample_low"] <= r["identity_posterior_sample"] <= r["identity_posterior_sample_high"]
        )
        assert r["identity_real_images"] > 0.85  # the classifier itself works on real digits
    # a wider likelihood pays less for distortion: the rate falls and the MSE rises with σ
    assert rows[1]["rate"] < rows[0]["rate"] and rows[1]["mse"] > rows[0]["mse"]
    for name in ("rate_distortion.png", "identity.png", "decodings.png"):
        assert (out / "figures" / name).is_file()
    assert "identity z~q" in (out / "sweep.md").read_text()
    # resumable: a second call reuses the finished runs
    before = (out / "runs" / "sigma_0.1" / "checkpoint" / "state.json").read_bytes()
    assert main(args) == 0
    assert (out / "runs" / "sigma_0.1" / "checkpoint" / "state.json").read_bytes() == before


@pytest.mark.parametrize("text", ["", "0.1,-1", "a,b", "0"])
def test_bad_sigmas(text):
    with pytest.raises(UserError):
        parse_sigmas(text)


def test_ppca_prediction_counts_eigenvalues_above_sigma_squared():
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(20000, 3)) * np.sqrt([1.0, 0.1, 0.001]))
    assert ppca_active_units(x, sigma=0.2, max_units=3) == 2  # σ² = 0.04 lies between 0.1 and 0.001
    assert ppca_active_units(x, sigma=0.01, max_units=2) == 2  # capped at the latent dimension
