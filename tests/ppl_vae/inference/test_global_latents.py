"""Global latents (sample sites outside the data plate): the minibatch scale, and held-out log p(x*).

The solvable case: probabilistic PCA whose mean μ is a global latent with q(μ) = N(m, diag s²),
and the exact local posterior q(z | x, μ) as the guide (``tests/ppl_vae/linear_gaussian.py``).
"""

import pyro.poutine as poutine
import pytest
import torch

from ppl_vae.diagnostics.estimators import importance_sample, psis_khat, summarize
from ppl_vae.inference.objectives import Objective, with_handlers
from tests.ppl_vae.linear_gaussian import make_global


def _kl_q_mu(pair) -> torch.Tensor:
    """KL(q(μ) ‖ p(μ)) between N(m, diag s²) and N(0, τ² I)."""
    s2, m, t2 = (pair.log_s.detach().exp() ** 2), pair.m.detach(), pair.tau**2
    return 0.5 * (s2 / t2 + m**2 / t2 - 1 - (s2 / t2).log()).sum()


def test_only_the_sites_inside_the_data_plate_are_scaled_by_n_over_b():
    pair = make_global()
    x = pair.ppca.sample(4, generator=torch.Generator().manual_seed(1))
    trace = poutine.trace(with_handlers(pair.model, 3.0, 1.0)).get_trace(x)
    assert trace.nodes["mu"]["scale"] == 1.0
    assert trace.nodes["z"]["scale"] == trace.nodes["x"]["scale"] == 3.0


@pytest.mark.parametrize("elbo,particles,calls", [("trace", 256, 8), ("iwae", 2, 40)])
def test_the_minibatch_objective_equals_the_full_batch_elbo_in_expectation(elbo, particles, calls):
    """E over draws and over the batch a step takes of the N/B-scaled loss = the full-batch ELBO, in closed form."""
    pair = make_global()
    x = pair.ppca.sample(12, generator=torch.Generator().manual_seed(1))
    exact = float(pair.expected_log_lik(x).sum() - _kl_q_mu(pair))
    objective = Objective(elbo, particles)
    with torch.no_grad():
        full = torch.stack([-objective(pair.model, pair.guide, x) for _ in range(calls)])
        # a minibatch step: one of the three batches of 4, scaled by N/B = 3; every batch equally likely
        steps = torch.stack(
            [
                torch.stack([-objective(pair.model, pair.guide, xb, scale=3.0) for xb in x.split(4)]).mean()
                for _ in range(calls)
            ]
        )
    for values in (full, steps):
        se = float(values.std() / calls**0.5)
        assert abs(float(values.mean()) - exact) < 4 * se + 0.05, (float(values.mean()), exact, se)
    assert float(_kl_q_mu(pair)) > 1.0  # scaling μ's terms by N/B as well would miss by 2 KL: the test could tell


def test_heldout_log_px_is_the_posterior_predictive_under_q_mu():
    pair = make_global()
    x = pair.ppca.sample(6, generator=torch.Generator().manual_seed(2))
    est = importance_sample(pair.model, pair.guide, x, k=2, global_draws=400)
    exact = pair.log_predictive(x)  # log N(x*; m, W Wᵀ + σ² I + diag s²)
    se = est.log_px_mc_se
    assert est.log_w.shape == (6, 400, 2) and est.global_draws == 400
    assert bool(((est.log_px - exact).abs() < 4 * se + 1e-3).all()), (est.log_px - exact, se)
    assert float(est.log_px_mc_se_inner.max()) < 1e-6  # the local posterior is exact: no inner noise
    # the ELBO reported is E_q(μ)[local ELBO] = E_q(μ) log N(x; μ, C), below log p(x*) by Jensen
    assert torch.allclose(est.elbo, pair.expected_log_lik(x), atol=0.15)
    assert bool((pair.expected_log_lik(x) < exact).all()) and float(est.elbo.mean()) < float(exact.mean())
    summary = summarize(est, psis_khat(est.log_w))
    assert summary.global_draws == 400 and summary.khat_max == 0.0
    assert summary.log_px_mc_se_inner < 1e-6 < summary.log_px_mc_se_outer
    assert "posterior predictive" in summary.log_px_estimand


def test_sample_decodes_at_theta_from_the_guide_and_the_export_keeps_it_without_the_point_dim():
    from ppl_vae.diagnostics.inference_data import to_inference_data
    from ppl_vae.inference.predictive import prior_decode

    pair = make_global(s=1e-4)
    with torch.no_grad():
        pair.m.fill_(10.0)  # q(μ) far from the prior N(0, I)
    x = pair.ppca.sample(6, generator=torch.Generator().manual_seed(4))
    fitted = prior_decode(pair.model, 2000, 3, dtype=torch.float64, guide=pair.guide)  # μ ~ q(μ), z ~ p(z)
    prior = prior_decode(pair.model, 2000, 3, dtype=torch.float64)  # μ ~ p(μ): one draw near 0
    assert torch.allclose(fitted.mean(0), torch.full((3,), 10.0, dtype=torch.float64), atol=0.25)
    assert float(prior.mean(0).abs().max()) < 5.0
    idata = to_inference_data(pair.model, pair.guide, x, draws=4)
    assert idata.posterior["mu"].dims == ("chain", "draw", "mu_dim") and idata.posterior["mu"].shape == (1, 4, 3)
    assert idata.posterior["z"].dims[:3] == ("chain", "draw", "obs") and "mu" not in idata.prior
