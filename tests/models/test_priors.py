"""The VampPrior's mixture density, its samples, and the paper's pseudo-input parameterisation."""

import inspect
import math

import pyro.distributions as dist
import pytest
import torch

from ppl_vae.models import DiagonalNormalMixture
from ppl_vae.runs.build import build_program
from tests.conftest import tiny_config


def _reference(loc, scale):
    components = dist.Normal(loc, scale).to_event(1)
    return dist.MixtureSameFamily(dist.Categorical(logits=torch.zeros(len(loc), dtype=loc.dtype)), components)


@pytest.mark.parametrize("spread", [1.0, 30.0])
def test_mixture_density_equals_mixture_same_family(spread):
    """The matrix-product density equals the elementwise one, also for z far out and narrow components."""
    torch.manual_seed(0)
    loc, scale = torch.randn(50, 6, dtype=torch.float64), torch.rand(50, 6, dtype=torch.float64) * 2 + 0.05
    z = torch.randn(4, 3, 6, dtype=torch.float64) * spread
    expected = _reference(loc, scale).log_prob(z)
    torch.testing.assert_close(DiagonalNormalMixture(loc, scale).log_prob(z), expected, rtol=1e-10, atol=1e-8)
    # float32 inputs: computed in float64 inside, so only the final rounding to float32 is lost
    got32 = DiagonalNormalMixture(loc.float(), scale.float()).log_prob(z.float())
    torch.testing.assert_close(got32.double(), expected, rtol=1e-5, atol=1e-4)


def test_mixture_samples_have_its_mean_and_variance():
    """200 000 draws: sample mean and variance within 5 SE of the mixture's closed forms."""
    torch.manual_seed(1)
    loc, scale = torch.randn(7, 3, dtype=torch.float64) * 2, torch.rand(7, 3, dtype=torch.float64) + 0.1
    mixture = DiagonalNormalMixture(loc, scale).expand((200_000,))
    draws = mixture.sample()
    reference = _reference(loc, scale)
    torch.testing.assert_close(mixture.mean[0], reference.mean)
    torch.testing.assert_close(mixture.variance[0], reference.variance)
    n = len(draws)
    se_mean = (reference.variance / n).sqrt()
    fourth = (draws - reference.mean).pow(4).mean(0)  # the SE of a sample variance: sqrt((μ4 - σ⁴) / n)
    se_var = ((fourth - reference.variance.square()) / n).sqrt()
    assert ((draws.mean(0) - reference.mean).abs() < 5 * se_mean).all()
    assert ((draws.var(0) - reference.variance).abs() < 5 * se_var).all()


def test_vamp_prior_is_the_mean_of_the_encoder_posteriors_at_its_pseudo_inputs():
    """log p(z) = log (1/C) Σ_c q(z | u_c), with u_c = hardtanh(w_c) in [0, 1] for the paper's parameterisation."""
    config = tiny_config(model={"prior": "vamp", "n_components": 7, "pseudo_inputs": "hardtanh", "pseudo_mean": 0.5})
    program = build_program(config, 64, (8, 8)).double()
    prior = program.model_module.prior
    u = prior.inputs()
    assert 0.0 <= u.min() and u.max() <= 1.0
    z = torch.randn(5, config.model.latent_dim, dtype=torch.float64)
    q = program.guide_module.encoder(u)  # batch (7,)
    expected = torch.logsumexp(q.log_prob(z[:, None]), dim=1) - math.log(7)
    torch.testing.assert_close(prior().log_prob(z), expected, rtol=1e-10, atol=1e-10)


def test_hardtanh_pseudo_inputs_start_at_the_given_mean_and_spread():
    """W ~ N(mean, std²) elementwise, as the paper's normal_init: sample moments of 50 x 64 values."""
    config = tiny_config(
        model={"prior": "vamp", "n_components": 50, "pseudo_inputs": "hardtanh", "pseudo_mean": 0.8, "pseudo_std": 0.01}
    )
    w = build_program(config, 64, (8, 8)).model_module.prior.pseudo_inputs.detach().double()
    n = w.numel()
    assert abs(w.mean().item() - 0.8) < 5 * 0.01 / math.sqrt(n)
    assert abs(w.std().item() / 0.01 - 1) < 5 / math.sqrt(2 * n)


def test_gradients_reach_squashed_pseudo_inputs_only_inside_the_unit_interval():
    """hardtanh passes the gradient where 0 < w < 1 and stops it outside, as the paper's layer does."""
    config = tiny_config(model={"prior": "vamp", "n_components": 4, "pseudo_inputs": "hardtanh"})
    prior = build_program(config, 64, (8, 8)).model_module.prior
    with torch.no_grad():
        prior.pseudo_inputs[0] = -0.5
        prior.pseudo_inputs[1] = 1.5
    prior().log_prob(torch.randn(3, config.model.latent_dim)).sum().backward()
    grad = prior.pseudo_inputs.grad
    assert (grad[:2] == 0).all() and (grad[2:].abs() > 0).any()


@pytest.mark.parametrize("name", ["standard", "mog", "vamp", "flow"])
def test_each_prior_constructor_names_only_the_options_the_bench_passes(name):
    """The bench passes each constructor the options its signature names: a name outside them would never be given."""
    from ppl_vae.models.priors import PRIOR_OPTIONS, PRIORS

    assert set(inspect.signature(PRIORS[name]).parameters) <= set(PRIOR_OPTIONS)


def test_a_misspelt_prior_option_is_an_error_not_silently_dropped():
    from ppl_vae.models.priors import PRIORS

    assert PRIORS["mog"](latent_dim=2, n_components=3).logits.shape == (3,)
    with pytest.raises(TypeError, match="n_component"):
        PRIORS["mog"](latent_dim=2, n_component=3)
    with pytest.raises(TypeError, match="flow"):
        PRIORS["flow"](latent_dim=2, flow=3)
