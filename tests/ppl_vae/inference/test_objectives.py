"""ELBO variants: analytic vs Monte Carlo KL, the IWAE bound, β and the σ–β equivalence, refusals."""

import math

import pyro
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from ppl_vae.errors import UserError
from ppl_vae.inference.importance import log_mean_exp, log_weights
from ppl_vae.inference.objectives import Objective
from ppl_vae.runs.build import build_program
from tests.conftest import tiny_config


@pytest.fixture
def program():
    return build_program(tiny_config(model={"latent_dim": 4}), 64, (8, 8)).double()


@pytest.fixture
def batch(digits):
    return digits.test[:32].double()


def test_meanfield_kl_matches_monte_carlo_kl(program, batch):
    K = 400
    kw = dict(num_particles=K, vectorize_particles=True)
    mf, tr = TraceMeanField_ELBO(**kw), Trace_ELBO(**kw)
    mf.loss(program.model, program.guide, batch), tr.loss(program.model, program.guide, batch)  # learn plate nesting
    pyro.set_rng_seed(3)
    loss_mf = mf.loss(program.model, program.guide, batch)
    pyro.set_rng_seed(3)
    loss_tr = tr.loss(program.model, program.guide, batch)
    # same draws, so the reconstruction terms cancel: the difference is KL_analytic - KL_MC (summed over the batch)
    pyro.set_rng_seed(3)
    kl_per_particle = -log_weights(program.model, program.guide, batch, K).log_ratio.sum(1)  # (K,)
    se = kl_per_particle.std() / math.sqrt(K)
    assert abs(loss_mf - loss_tr) < 3 * se, (loss_mf - loss_tr, se)
    assert se > 0


def test_iwae_bound_is_above_elbo_and_grows_with_k(program, batch):
    with torch.no_grad():
        lw = log_weights(program.model, program.guide, batch, 1000).total  # (1000, B)
    elbo = lw.mean(0)
    bounds = {k: torch.stack([log_mean_exp(chunk, 0) for chunk in lw.split(k)]).mean(0) for k in (1, 10, 100, 1000)}
    torch.testing.assert_close(bounds[1], elbo)
    means = [bounds[k].mean().item() for k in (1, 10, 100, 1000)]
    assert all(b > a for a, b in zip(means, means[1:])), means
    assert (bounds[1000] >= elbo - 1e-9).all()


def test_iwae_objective_is_renyi_alpha_zero(program, batch):
    K = 8
    ours, renyi = Objective("iwae", particles=K), RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True)
    ours(program.model, program.guide, batch), renyi.loss(program.model, program.guide, batch)  # learn plate nesting
    pyro.set_rng_seed(11)
    a = ours(program.model, program.guide, batch).item()
    pyro.set_rng_seed(11)
    b = renyi.loss(program.model, program.guide, batch)
    assert a == pytest.approx(b, rel=1e-10)


@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_sigma_is_beta_equal_two_sigma_squared(sigma, batch):
    """-ELBO of the Normal(σ) model, times 2σ², is SSE + 2σ²·KL (+ const): same objective, same gradients."""
    a = build_program(tiny_config(model={"sigma": sigma}), 64, (8, 8)).double()
    b = build_program(tiny_config(model={"sigma": 0.5**0.5}), 64, (8, 8)).double()  # 1/(2σ²) = 1: plain SSE
    b.load_state_dict({k: (b.state_dict()[k] if k.endswith("sigma") else v) for k, v in a.state_dict().items()})
    objective = Objective("trace")
    objective(a.model, a.guide, batch)
    D, B = batch.shape[1], batch.shape[0]
    const = lambda s: B * D / 2 * math.log(2 * math.pi * s**2)  # noqa: E731

    pyro.set_rng_seed(0)
    loss_a = objective(a.model, a.guide, batch)  # SSE/(2σ²) + KL + const_a
    grads_a = torch.autograd.grad(loss_a, list(a.parameters()))
    pyro.set_rng_seed(0)
    loss_b = objective(b.model, b.guide, batch, beta=2 * sigma**2)  # SSE + 2σ² KL + const_b
    grads_b = torch.autograd.grad(loss_b, list(b.parameters()))

    torch.testing.assert_close(loss_b - const(0.5**0.5), 2 * sigma**2 * (loss_a - const(sigma)))
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, 2 * sigma**2 * ga)


def test_beta_scales_only_the_latent_terms(program, batch):
    objective = Objective("meanfield")
    objective(program.model, program.guide, batch)
    values = {}
    for beta in (0.0, 1.0, 2.0):
        pyro.set_rng_seed(0)
        values[beta] = objective(program.model, program.guide, batch, beta=beta).item()
    distortion, kl = values[0.0], values[1.0] - values[0.0]
    assert kl > 0
    assert values[2.0] == pytest.approx(distortion + 2 * kl, rel=1e-9)


def test_meanfield_without_closed_form_is_refused(batch):
    program = build_program(tiny_config(guide={"name": "iaf"}), 64, (8, 8))
    with pytest.raises(UserError, match="closed-form KL"):
        Objective("meanfield").check(program.model, program.guide, batch.float())


def test_unknown_elbo():
    with pytest.raises(UserError, match="unknown ELBO"):
        Objective("nope")


@pytest.mark.parametrize("elbo", ["trace", "meanfield", "iwae"])
def test_checking_an_objective_draws_nothing_from_the_rng(program, batch, elbo):
    """Set-up must not advance the RNG, or a resumed run would draw other noise than the original."""
    state = torch.get_rng_state()
    Objective(elbo, particles=2).check(program.model, program.guide, batch)
    assert torch.equal(torch.get_rng_state(), state)
