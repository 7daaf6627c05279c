"""The identity at the heart of the project, and every likelihood's support and density."""

import math

import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions.utils import _standard_normal

from ppl_vae.guides import AmortizedGuide, DiagonalNormal, Encoder
from ppl_vae.models import LIKELIHOODS, MLP, VAE, StandardNormal, check_scale


def canonical(data_dim, latent_dim, sigma, dtype=torch.float64):
    vae = VAE(
        StandardNormal(latent_dim),
        MLP([latent_dim, 16, data_dim]),
        LIKELIHOODS["normal"](data_dim=data_dim, sigma=sigma),
    )
    guide = AmortizedGuide(Encoder(MLP([data_dim, 16], activate_last=True), DiagonalNormal(16, latent_dim)))
    return vae.to(dtype), guide.to(dtype)


@pytest.mark.parametrize("sigma", [0.03, 0.1, 1.0, 2.5])
@pytest.mark.parametrize("data_dim", [1, 7, 64])
def test_log_likelihood_is_scaled_sse(sigma, data_dim):
    """log p(x|z) = -SSE/(2σ²) - (D/2) log(2πσ²), read off the model's own trace."""
    vae, _ = canonical(data_dim, 3, sigma)
    x = torch.rand(5, data_dim, dtype=torch.float64)
    z = torch.randn(5, 3, dtype=torch.float64)
    trace = poutine.trace(poutine.condition(vae.model, {"z": z})).get_trace(x)
    log_lik = trace.nodes["x"]["fn"].log_prob(x)  # (5,)
    sse = ((x - vae.decoder(z)) ** 2).sum(-1)
    expected = -sse / (2 * sigma**2) - data_dim / 2 * math.log(2 * math.pi * sigma**2)
    torch.testing.assert_close(log_lik, expected, rtol=1e-12, atol=1e-10)


def _grads(params, loss):
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("sigma", [0.1, 0.5])
@pytest.mark.parametrize("analytic_kl", [False, True])
def test_elbo_gradient_is_sse_plus_kl(sigma, analytic_kl):
    """∇(-ELBO) of the Normal(σ) program = ∇[SSE/(2σ²) + KL] by hand, for the same noise ε."""
    D, L, B = 6, 2, 4
    vae, guide = canonical(D, L, sigma)
    params = list(vae.parameters()) + list(guide.parameters())
    x = torch.rand(B, D, dtype=torch.float64)
    elbo = TraceMeanField_ELBO() if analytic_kl else Trace_ELBO()

    torch.manual_seed(1)
    pyro_loss = elbo.differentiable_loss(vae.model, guide.guide, x)
    pyro_grads = _grads(params, pyro_loss)

    torch.manual_seed(1)
    q = guide.encoder(x).base_dist  # Normal(μ(x), s(x))
    eps = _standard_normal((B, L), dtype=x.dtype, device=x.device)
    z = q.loc + q.scale * eps  # the same reparameterised draw
    sse = ((x - vae.decoder(z)) ** 2).sum()
    if analytic_kl:
        kl = (0.5 * (q.loc**2 + q.scale**2 - 1) - q.scale.log()).sum()
    else:
        kl = (dist.Normal(q.loc, q.scale).log_prob(z) - dist.Normal(0.0, 1.0).log_prob(z)).sum()
    hand_loss = sse / (2 * sigma**2) + kl
    constant = B * D / 2 * math.log(2 * math.pi * sigma**2)
    torch.testing.assert_close(pyro_loss, hand_loss + constant)
    for g_pyro, g_hand in zip(pyro_grads, _grads(params, hand_loss)):
        torch.testing.assert_close(g_pyro, g_hand)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf"), "a"])
def test_sigma_must_be_positive(sigma):
    with pytest.raises(ValueError, match="sigma"):
        check_scale(sigma)
    with pytest.raises(ValueError, match="sigma"):
        LIKELIHOODS["normal"](data_dim=3, sigma=sigma)


@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_likelihood_density_and_support(name):
    """Each likelihood is a normalised density of the declared family at the decoder output."""
    D = 5
    lik = LIKELIHOODS[name](data_dim=D, sigma=0.3).double()
    out = torch.randn(3, D * lik.params_per_pixel, dtype=torch.float64)
    p = lik(out)
    assert p.event_shape == (D,) and p.batch_shape == (3,)
    low, high = lik.support
    x = torch.rand(3, D, dtype=torch.float64).clamp(0.01, 0.99)
    # the density factorises over pixels: compare with the base family pixel by pixel
    base = p.base_dist
    torch.testing.assert_close(p.log_prob(x), base.log_prob(x).sum(-1))
    bad = x.clone()
    bad[0, 0] = high + 1.0 if math.isfinite(high) else float("nan")
    if math.isfinite(high):
        with pytest.raises(ValueError, match="supports"):
            lik.check_data(bad)
    else:
        lik.check_data(x * 100 - 50)  # the real line is fine


def test_normal_hetero_uses_decoder_scale():
    lik = LIKELIHOODS["normal-hetero"](data_dim=2, sigma=0.1).double()
    out = torch.tensor([[0.0, 1.0, 0.0, 2.0]], dtype=torch.float64)  # loc (0, 1), raw scale (0, 2)
    scale = torch.nn.functional.softplus(torch.tensor([0.0, 2.0], dtype=torch.float64)) + 1e-3
    x = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    expected = dist.Normal(torch.tensor([0.0, 1.0], dtype=torch.float64), scale).log_prob(x).sum(-1)
    torch.testing.assert_close(lik(out).log_prob(x), expected)


def test_learned_sigma_has_gradient():
    for name, shape in [("normal-learned", ()), ("normal-pixel", (4,))]:
        lik = LIKELIHOODS[name](data_dim=4, sigma=0.2)
        assert lik.log_sigma.shape == shape
        lik(torch.zeros(2, 4)).log_prob(torch.ones(2, 4)).sum().backward()
        assert lik.log_sigma.grad is not None and torch.all(lik.log_sigma.grad != 0)


def test_isotropic_normal_is_the_normal():
    from ppl_vae.models import IsotropicNormal

    loc = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    fast, slow = IsotropicNormal(loc, 0.3), dist.Normal(loc, 0.3)
    torch.testing.assert_close(fast.log_prob(x), slow.log_prob(x))
    (g_fast,) = torch.autograd.grad(fast.log_prob(x).sum(), loc)
    (g_slow,) = torch.autograd.grad(slow.log_prob(x).sum(), loc)
    torch.testing.assert_close(g_fast, g_slow)
    expanded = fast.expand((5, 4, 3))
    assert isinstance(expanded, IsotropicNormal) and expanded.sigma == 0.3
    torch.testing.assert_close(expanded.log_prob(x[0]), slow.expand((5, 4, 3)).log_prob(x[0]))


@pytest.mark.parametrize(
    "name,family", [("normal", torch.distributions.Normal), ("laplace", torch.distributions.Laplace)]
)
def test_a_loaded_sigma_is_the_sigma_every_family_computes_with(name, family):
    """σ has one source, the saved buffer: loading σ = 0.5 into a program built with 0.1 uses 0.5."""
    built = LIKELIHOODS[name](data_dim=3, sigma=0.1)
    built.load_state_dict(LIKELIHOODS[name](data_dim=3, sigma=0.5).state_dict())
    loc, x = torch.zeros(2, 3), torch.tensor([[0.3, -0.2, 1.0], [0.0, 0.1, -0.4]])
    want = family(loc, 0.5).log_prob(x).sum(-1)
    torch.testing.assert_close(built(loc).log_prob(x), want)
