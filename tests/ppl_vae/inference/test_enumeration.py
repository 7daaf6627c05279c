"""Discrete latents summed out exactly: log-weights, log p(x), the traceenum ELBO and its gradients."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

from ppl_vae.diagnostics.estimators import importance_sample
from ppl_vae.inference.importance import log_mean_exp, log_weights
from ppl_vae.inference.objectives import Objective
from ppl_vae.inference.trainer import Trainer
from tests.conftest import tiny_config
from tests.ppl_vae.mixtures import MixtureGuide, MixturePPCA, MixtureVAE


@pytest.fixture
def mixture():
    return MixturePPCA()


@pytest.fixture
def x(mixture):
    return mixture.sample(30, torch.Generator().manual_seed(1))[0]


def test_exact_posterior_gives_exact_log_weights_with_y_summed_out(mixture, x):
    """q(y|x) q(z|x,y) = p(y, z|x): every weight is p(x), and the enumerated ELBO is log p(x) too."""
    lw = log_weights(mixture.model, MixtureGuide(mixture).guide, x, num_particles=7)
    exact = mixture.log_px(x).expand(7, -1)
    torch.testing.assert_close(lw.total, exact, rtol=0, atol=1e-9)
    torch.testing.assert_close(lw.elbo, exact, rtol=0, atol=1e-9)
    torch.testing.assert_close(lw.log_lik + lw.log_ratio, lw.elbo)


def test_summed_weights_do_not_depend_on_q_y(mixture, x):
    """log w = log Σ_y p(x, y, z_y) / q(z_y | x, y): q(y|x) cancels; the ELBO pays KL(q(y|x) || p(y|x))."""
    exact_q = MixtureGuide(mixture).guide
    wrong_q = MixtureGuide(mixture, temperature=5.0).guide
    pyro.set_rng_seed(2)
    a = log_weights(mixture.model, exact_q, x, 3)
    pyro.set_rng_seed(2)
    b = log_weights(mixture.model, wrong_q, x, 3)
    torch.testing.assert_close(a.total, b.total, rtol=0, atol=1e-9)
    log_q = mixture.posterior_y(x) / 5.0
    log_q = log_q - torch.logsumexp(log_q, -1, keepdim=True)
    kl = (log_q.exp() * (log_q - mixture.posterior_y(x))).sum(-1)  # KL(q(y|x) || p(y|x)), (B,)
    torch.testing.assert_close(b.elbo, (mixture.log_px(x) - kl).expand(3, -1), rtol=0, atol=1e-9)


def test_iwae_of_a_trained_mixture_is_within_0_05_nats_of_exact_log_px_on_held_out_points():
    """Train a mixture of pPCAs and its guide with traceenum; IWAE-1000 on held-out points vs the exact log p(x)."""
    truth = MixturePPCA(seed=1)
    x, _ = truth.sample(2200, torch.Generator().manual_seed(3))
    x = x.float()
    program = MixtureVAE(seed=0).float()
    config = tiny_config(train={"epochs": 25, "batch_size": 200, "lr": 0.02, "elbo": "traceenum"})
    trainer = Trainer(program, config.train, x[:2000], x[2000:], progress=False)
    trainer.fit()
    assert trainer.history[-1]["test_elbo"] > trainer.history[0]["test_elbo"] + 0.5
    held_out = x[2000:].double()
    program = program.double()
    with torch.no_grad():
        exact = program.mixture.log_px(held_out)
    est = importance_sample(program.model, program.guide, held_out, k=1000)
    assert abs(float((est.log_px - exact).mean())) < 0.05, float((est.log_px - exact).mean())
    assert float((exact - est.elbo).mean()) > 0  # the ELBO is a bound


def _hand_summed_elbo(program: MixtureVAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Σ_i Σ_y q(y|x_i) [log p(y) + log p(z_y|y) + log p(x_i|z_y) - log q(y|x_i) - log q(z_y|x_i, y)], z_y = μ + s·ε."""
    m, g = program.mixture, program.encoder
    log_q_y = torch.log_softmax(g.classifier(x), -1)  # (B, C)
    total = 0.0
    for c in range(m.C):
        y = torch.full((x.shape[0],), c)
        loc, scale = g.posterior_z(x, y)
        z = loc + scale * eps[c]
        log_q_z = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        log_p = (
            torch.log_softmax(m.logits, -1)[c]
            + torch.distributions.Normal(m.mu[c], 1.0).log_prob(z).sum(-1)
            + torch.distributions.Normal(z @ m.W.T + m.b, m.sigma).log_prob(x).sum(-1)
        )
        total = total + (log_q_y[:, c].exp() * (log_p - log_q_y[:, c] - log_q_z)).sum()
    return total


@pytest.mark.parametrize("scale", [1.0, 37.5])
def test_traceenum_loss_and_gradients_equal_a_hand_summed_elbo(scale):
    program = MixtureVAE(seed=4)
    x, _ = MixturePPCA(seed=1).sample(16, torch.Generator().manual_seed(5))
    objective = Objective("traceenum")
    objective.check(program.model, program.guide, x)
    params = list(program.parameters())
    pyro.set_rng_seed(9)
    loss = objective(program.model, program.guide, x, scale=scale)
    grads = torch.autograd.grad(loss, params)
    # the same noise: the guide's z draws under the same enumeration, read back as ε = (z - loc) / s
    pyro.set_rng_seed(9)
    trace = poutine.trace(poutine.enum(program.guide, first_available_dim=-2)).get_trace(x)
    with torch.no_grad():
        z = trace.nodes["z"]["value"]  # (C, B, L)
        loc, s = program.encoder.posterior_z(x, trace.nodes["y"]["value"])
        eps = (z - loc) / s
    hand = -scale * _hand_summed_elbo(program, x, eps)
    hand_grads = torch.autograd.grad(hand, params)
    torch.testing.assert_close(loss, hand, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, hand_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # the per-datapoint log-weights give the same ELBO for the same noise
    pyro.set_rng_seed(9)
    per_point = log_weights(program.model, program.guide, x, 1, 1).elbo  # (1, B)
    torch.testing.assert_close(-scale * per_point.sum(), hand.detach(), rtol=1e-9, atol=1e-9)


class ModelMixture(nn.Module):
    """y enumerated in the *model* only: x | z, y ~ N(W z + μ_y, σ²), z ~ N(0, I); the guide proposes z alone."""

    def __init__(self, D=3, L=2, C=3, sigma=0.5):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = nn.Parameter(torch.randn(D, L, generator=g, dtype=torch.float64))
        self.mu = nn.Parameter(2 * torch.randn(C, D, generator=g, dtype=torch.float64))
        self.logits = nn.Parameter(torch.randn(C, generator=g, dtype=torch.float64))
        self.enc = nn.Linear(D, 2 * L).double()
        self.sigma, self.L = sigma, L

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.L), 1.0).to_event(1))
            y = pyro.sample("y", dist.Categorical(logits=self.logits), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(z @ self.W.T + self.mu[y], self.sigma).to_event(1), obs=x)

    def guide(self, x):
        loc, raw = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 0.3).to_event(1))

    def log_px(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.W.shape[0], dtype=x.dtype)
        joint = dist.MultivariateNormal(self.mu, cov).log_prob(x[:, None, :]) + torch.log_softmax(self.logits, -1)
        return torch.logsumexp(joint, -1)


def test_model_enumerated_sites_are_summed_inside_log_p_and_iwae_converges():
    program = ModelMixture()
    with torch.no_grad():  # q(z|x) ≈ p(z): a wide proposal, so that K = 4000 draws cover the posterior
        program.enc.weight.zero_()
        program.enc.bias.zero_()
        x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
        exact = program.log_px(x)
    est = importance_sample(program.model, program.guide, x, k=4000)
    assert abs(float((est.log_px - exact).mean())) < 0.05, float((est.log_px - exact).mean())
    assert float((exact - est.elbo).mean()) > 0.05  # the prior is not the posterior: the ELBO is well below


def test_iwae_with_model_enumeration_equals_its_hand_summed_bound_and_gradients():
    """The iwae objective sums the model's y inside each weight: log (1/K) Σ_k Σ_y p(x, y, z_k) / q(z_k | x)."""
    program, K = ModelMixture(), 5
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    objective = Objective("iwae", particles=K)
    objective.check(program.model, program.guide, x)
    params = list(program.parameters())
    pyro.set_rng_seed(4)
    loss = objective(program.model, program.guide, x)
    grads = torch.autograd.grad(loss, params)
    pyro.set_rng_seed(4)
    eps = torch.randn(K, 8, program.L, dtype=torch.float64)  # the guide's one draw of K x B x L noise
    loc, raw = program.enc(x).chunk(2, -1)
    scale = nn.functional.softplus(raw) + 0.3
    z = loc + scale * eps  # (K, B, L)
    log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    mean = (z @ program.W.T)[None] + program.mu[:, None, None, :]  # (C, K, B, D)
    log_px_y = torch.distributions.Normal(mean, program.sigma).log_prob(x).sum(-1)  # (C, K, B)
    log_w = torch.logsumexp(torch.log_softmax(program.logits, -1)[:, None, None] + log_px_y, 0) + log_pz - log_q
    hand = -(torch.logsumexp(log_w, 0) - math.log(K)).sum()
    torch.testing.assert_close(loss, hand, rtol=1e-9, atol=1e-9)
    for a, b in zip(grads, torch.autograd.grad(hand, params)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    lw = log_weights(program.model, program.guide, x, 3).total
    assert torch.isfinite(log_mean_exp(lw)).all()
