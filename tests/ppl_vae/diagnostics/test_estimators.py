"""The workflow estimators against models with known answers."""

import math

import arviz as az
import numpy as np
import torch

import ppl_vae
from ppl_vae.diagnostics.estimators import active_units, importance_sample, psis_khat
from ppl_vae.diagnostics.inference_data import CONDITIONAL_GROUP, to_inference_data
from ppl_vae.diagnostics.sbc import simulation_based_calibration
from ppl_vae.inference.importance import log_weights
from tests.conftest import tiny_config
from tests.ppl_vae.linear_gaussian import PosteriorGuide


def test_exact_posterior_gives_exact_log_weights(ppca, x):
    lw = log_weights(ppca.model, PosteriorGuide(ppca).guide, x, num_particles=50).total  # (K, B)
    exact = ppca.log_px(x)
    torch.testing.assert_close(lw, exact.expand_as(lw), rtol=0, atol=1e-9)
    est = importance_sample(ppca.model, PosteriorGuide(ppca).guide, x, k=200)
    torch.testing.assert_close(est.elbo, exact, rtol=0, atol=1e-9)
    torch.testing.assert_close(est.log_px, exact, rtol=0, atol=1e-9)
    assert (psis_khat(est.log_w) < 0.5).all()


def test_iwae_approaches_log_px_for_a_poor_guide(ppca, x):
    exact = ppca.log_px(x).mean().item()
    guide = PosteriorGuide(ppca, width=1.6, shift=0.3).guide
    gaps = {}
    for k in (1, 10, 100, 3000):
        torch.manual_seed(0)
        gaps[k] = exact - importance_sample(ppca.model, guide, x, k=k).log_px.mean().item()
    assert gaps[1] > 0.3  # the ELBO is well below log p(x)
    assert gaps[1] > gaps[10] > gaps[100] > gaps[3000] >= -0.01
    assert gaps[3000] < 0.05


def test_khat_flags_a_far_too_narrow_guide(ppca, x):
    est = importance_sample(ppca.model, PosteriorGuide(ppca, width=0.1).guide, x, k=2000)
    khat = psis_khat(est.log_w)
    # a proposal 10x too narrow has infinite-variance weights: the typical point is flagged
    assert np.median(khat) > 0.7 and np.mean(khat > 0.7) > 0.7, khat
    wide = importance_sample(ppca.model, PosteriorGuide(ppca, width=1.3).guide, x, k=2000)
    assert np.mean(psis_khat(wide.log_w)) < 0.5


def test_sbc_uniform_for_exact_guide_and_not_for_overconfident(ppca):
    exact = simulation_based_calibration(
        ppca.model, PosteriorGuide(ppca).guide, 5, simulations=1000, num_draws=49, dtype=torch.float64
    )
    assert exact.pvalue > 0.01, exact.pvalues
    narrow = simulation_based_calibration(
        ppca.model, PosteriorGuide(ppca, width=0.5).guide, 5, simulations=1000, num_draws=49, dtype=torch.float64
    )
    assert narrow.pvalue < 1e-6, narrow.pvalues
    # over-confidence piles ranks at both ends
    ends = np.mean((narrow.ranks <= 4) | (narrow.ranks >= 45))
    assert ends > 2 * 10 / 50


def test_inference_data_round_trips_through_netcdf(tmp_path, ppca, x):
    idata = to_inference_data(ppca.model, PosteriorGuide(ppca).guide, x[:7], draws=5)
    path = tmp_path / "id.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    assert set(back.groups()) == {
        "posterior",
        "posterior_predictive",
        CONDITIONAL_GROUP,
        "observed_data",
        "prior",
        "prior_predictive",
    }
    assert back.posterior["z"].dims == ("chain", "draw", "obs", "z_dim")
    assert back.posterior["z"].shape == (1, 5, 7, 2)
    assert back.posterior_predictive["x"].dims == ("chain", "draw", "obs", "pixel")
    assert list(back.posterior.coords["obs"].values) == list(range(7))
    assert back.prior["z"].dims == ("chain", "draw", "z_dim")
    np.testing.assert_allclose(back.observed_data["x"].values, x[:7].numpy())
    # the conditional group is log p(x_i | z) of the stored draws, and says so
    z = torch.from_numpy(back.posterior["z"].values[0])  # (S, N, L)
    mean = z @ ppca.W.T + ppca.b
    expected = torch.distributions.Normal(mean, ppca.sigma).log_prob(x[:7]).sum(-1)
    conditional = getattr(back, CONDITIONAL_GROUP)
    np.testing.assert_allclose(conditional["x"].values[0], expected.numpy(), rtol=1e-10)
    assert "log p(x_i | z_s)" in conditional.attrs["quantity"]
    assert "heldout_elpd()" in back.attrs["heldout_elpd"]


def test_user_program_with_two_latent_sites_gets_both(tmp_path):
    from pathlib import Path

    spec = str(Path(__file__).resolve().parents[3] / "examples" / "hierarchical_vae.py") + ":hierarchical"
    run = ppl_vae.fit(tiny_config(model={"program": spec}, train={"epochs": 1}), tmp_path / "h", progress=False)
    idata = to_inference_data(run.program.model, run.program.guide, run.dataset().test[:4], draws=3)
    assert {"z1", "z2"} <= set(idata.posterior.data_vars)
    assert idata.posterior["z2"].dims == ("chain", "draw", "obs", "z2_dim")


def test_evaluate_writes_every_key(tmp_path):
    from ppl_vae.cli import main

    out = tmp_path / "run"
    assert main(["fit", "--out", str(out), "--epochs", "2", "--hidden-dim", "32", "--no-progress"]) == 0
    code = main(
        [
            "evaluate",
            str(out),
            "--k",
            "50",
            "--points",
            "60",
            "--gap-points",
            "10",
            "--sbc-simulations",
            "100",
            "--no-progress",
        ]
    )
    assert code == 0
    import json

    result = json.loads((out / "evaluation" / "evaluation.json").read_text())
    keys = {
        "log_px",
        "log_px_se",
        "elbo",
        "kl",
        "distortion",
        "mse",
        "active_units",
        "khat_mean",
        "khat_frac_gt_0_7",
        "approximation_gap",
        "amortization_gap",
        "sbc_pvalue",
        "k",
    }
    assert keys <= set(result)
    assert result["k"] == 50 and result["n_points"] == 60
    assert result["log_px"] >= result["elbo"]
    assert math.isclose(result["elbo"], -result["distortion"] - result["kl"], rel_tol=1e-5)
    for name in [
        "khat.png",
        "khat_worst.png",
        "prior_predictive.png",
        "posterior_predictive.png",
        "ppc.png",
        "sbc.png",
    ]:
        assert (out / "evaluation" / "figures" / name).is_file(), name
        assert f"evaluation/figures/{name}" in (out / "report.md").read_text()
    assert (out / "evaluation" / "inference_data.nc").is_file()
    assert "## Diagnostics" in (out / "report.md").read_text()


def test_active_units_counts_variance_of_posterior_means():
    means = torch.stack([torch.randn(500), 0.05 * torch.randn(500), torch.zeros(500)], dim=1).double()
    n, variance = active_units(means)
    assert n == 1 and variance[1] < 0.01


def test_chunking_does_not_change_the_estimate(ppca, x):
    guide = PosteriorGuide(ppca, width=1.5).guide
    torch.manual_seed(0)
    a = importance_sample(ppca.model, guide, x, k=64, rows=1 << 15)
    torch.manual_seed(0)
    b = importance_sample(ppca.model, guide, x, k=64, rows=37)  # many small chunks
    assert a.log_w.shape == b.log_w.shape == (40, 64)
    # different chunking draws different particles; the estimates agree statistically
    assert abs(a.log_px.mean() - b.log_px.mean()) < 0.05
