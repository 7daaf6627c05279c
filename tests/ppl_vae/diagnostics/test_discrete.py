"""Estimators on programs with discrete latents, several observed sites and masks, against known answers."""

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae.diagnostics.estimators import active_units, importance_sample
from ppl_vae.diagnostics.gaps import refine_local_guide
from ppl_vae.diagnostics.sbc import ranks_with_ties, simulation_based_calibration
from ppl_vae.inference.predictive import classify
from tests.ppl_vae.linear_gaussian import PosteriorGuide, make
from tests.ppl_vae.mixtures import MixtureGuide, MixturePPCA


class Clusters(nn.Module):
    """y ~ Cat(π), x | y ~ N(μ_y, σ² I): the posterior p(y | x) is exact in closed form."""

    def __init__(self, C=4, D=2, sigma=1.0, temperature=1.0, bias=0.0, enumerate_y=True):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("mu", 1.5 * torch.randn(C, D, generator=g, dtype=torch.float64))
        self.register_buffer("logits", torch.randn(C, generator=g, dtype=torch.float64))
        self.sigma, self.temperature, self.bias = sigma, temperature, bias
        self.infer = {"enumerate": "parallel"} if enumerate_y else {}

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=self.logits))
            pyro.sample("x", dist.Normal(self.mu[y], self.sigma).to_event(1), obs=x)

    def posterior(self, x):
        log_joint = dist.Normal(self.mu, self.sigma).to_event(1).log_prob(x[..., None, :]) + self.logits.log_softmax(-1)
        return log_joint.log_softmax(-1)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            logits = self.posterior(x) / self.temperature
            logits = logits + self.bias * (torch.arange(len(self.logits)) == 0)  # a wrong q leans to class 0
            pyro.sample("y", dist.Categorical(logits=logits), infer=dict(self.infer))


def _sbc(program):
    return simulation_based_calibration(program.model, program.guide, 2, 1000, 49, dtype=torch.float64)


def test_sbc_is_uniform_for_an_exact_discrete_posterior_and_rejects_a_wrong_one():
    exact = _sbc(Clusters())
    assert exact.pvalue > 0.01, exact.pvalues
    assert _sbc(Clusters(bias=3.0)).pvalue < 1e-4  # leans to one class
    assert _sbc(Clusters(temperature=0.1)).pvalue < 1e-4  # over-confident: ranks pile at the ends


def test_ties_are_broken_uniformly():
    """With every draw tied, the rank is uniform on {0..L}, not stuck at 0."""
    true = torch.zeros(20000, 1)
    ranks = ranks_with_ties(true, torch.zeros(9, 20000, 1), torch.Generator().manual_seed(0)).numpy().ravel()
    counts = np.bincount(ranks, minlength=10)
    assert counts.min() > 1800 and counts.max() < 2200  # 2000 expected in each of the 10 ranks
    assert np.array_equal(ranks_with_ties(true, torch.ones(9, 20000, 1), torch.Generator()).numpy().ravel(), 0 * ranks)


def test_accuracy_reads_the_guides_most_probable_class():
    program = Clusters()
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    bayes = program.posterior(x).argmax(-1)
    assert torch.equal(classify(program.guide, x), bayes)

    class OneHot(Clusters):
        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("y", dist.OneHotCategorical(logits=self.posterior(x)), infer={"enumerate": "parallel"})

    assert torch.equal(classify(OneHot().guide, x, batch_size=64), bayes)
    assert classify(PosteriorGuide(make()).guide, torch.randn(3, 5, dtype=torch.float64)) is None  # no site y


def test_a_discrete_only_program_has_exact_log_px_whatever_k():
    program = Clusters(temperature=3.0)  # a poor q(y|x): summed out, it does not matter
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    est = importance_sample(program.model, program.guide, x, k=3)
    log_joint = dist.Normal(program.mu, 1.0).to_event(1).log_prob(x[:, None, :]) + program.logits.log_softmax(-1)
    torch.testing.assert_close(est.log_px, torch.logsumexp(log_joint, -1), rtol=0, atol=1e-9)
    assert est.latent_mean.shape == (50, 0)  # no continuous latent: no active units to count


class Collapsed(nn.Module):
    """pPCA's exact posterior for z, plus a unit w that carries nothing: q(w | x) = p(w) = N(0, 1)."""

    def __init__(self):
        super().__init__()
        self.ppca = make()

    def model(self, x):
        W, b = self.ppca.W, self.ppca.b
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(W.shape[1]), 1.0).to_event(1))
            pyro.sample("w", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, self.ppca.sigma).to_event(1), obs=x)

    def guide(self, x):
        loc, cov = self.ppca.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc, cov))
            pyro.sample("w", dist.Normal(x.new_zeros(1), 1.0).to_event(1))


def test_active_units_come_from_the_guides_means_not_from_a_few_draws():
    """At K = 4 the average of draws of the collapsed w varies by 1/4 between points: it would count as active."""
    program = Collapsed()
    x = program.ppca.sample(400, torch.Generator().manual_seed(0))
    est = importance_sample(program.model, program.guide, x, k=4)
    n_active, variance = active_units(est.latent_mean)
    loc, cov = program.ppca.posterior(x)
    assert n_active == 2 and variance[-1] < 1e-12  # z's two units, never w
    torch.testing.assert_close(est.latent_mean[:, :2], loc, rtol=0, atol=1e-9)  # E_q[z], exactly
    torch.testing.assert_close(est.latent_var[:, :2], cov.diagonal().expand(400, 2), rtol=0, atol=1e-9)


class TwoSites(nn.Module):
    """No latents: x split into two observed sites, the second masked on its first element; plus a deterministic."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
        self.register_buffer("given", torch.tensor([False, True]))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.deterministic("total", x.sum(-1))
            pyro.sample("a", dist.Normal(self.mean[:2], 1.0).to_event(1), obs=x[:, :2])
            pyro.sample("b", dist.Normal(self.mean[2:], 2.0).mask(self.given).to_event(1), obs=x[:, 2:])

    def guide(self, x):
        pass


def test_distortion_and_mse_per_observed_site_respect_masks():
    program = TwoSites()
    x = torch.rand(30, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    est = importance_sample(program.model, program.guide, x, k=2)
    a = -dist.Normal(program.mean[:2], 1.0).log_prob(x[:, :2]).sum(-1)
    b = -dist.Normal(program.mean[3], 2.0).log_prob(x[:, 3])  # only the modelled element
    torch.testing.assert_close(est.distortion_by_site["a"], a)
    torch.testing.assert_close(est.distortion_by_site["b"], b)
    torch.testing.assert_close(est.distortion, a + b)
    err = (x - program.mean) ** 2
    torch.testing.assert_close(est.mse_by_site["a"], err[:, :2].mean(-1))
    torch.testing.assert_close(est.mse_by_site["b"], err[:, 3])
    torch.testing.assert_close(est.mse, (err[:, 0] + err[:, 1] + err[:, 3]) / 3)  # pooled over modelled elements
    assert set(est.distortion_by_site) == {"a", "b"}  # the deterministic site is not an observation


def test_gaps_refine_discrete_sites_with_free_logits():
    mixture = MixturePPCA()
    x = mixture.sample(20, torch.Generator().manual_seed(0))[0]
    local = refine_local_guide(mixture.model, MixtureGuide(mixture, temperature=4.0).guide, x, steps=150, lr=0.05)
    assert set(local.notes) == {"y", "z"} and "logits" in local.notes["y"]
    refined = importance_sample(mixture.model, local.guide, x, k=200, split_points=False)
    exact = mixture.log_px(x).detach()
    poor = importance_sample(mixture.model, MixtureGuide(mixture, temperature=4.0).guide, x, k=200)
    assert float((refined.elbo - poor.elbo).mean()) > 0.1  # refining q(y) per point closes most of the KL in y
    assert float((exact - refined.log_px).abs().mean()) < 0.05


def test_gaps_are_skipped_for_a_sampled_discrete_site_of_another_family():
    class Counts(nn.Module):
        def model(self, x):
            with pyro.plate("data", x.shape[0]):
                y = pyro.sample("y", dist.Binomial(3, 0.5 * torch.ones(())))
                pyro.sample("x", dist.Normal(y, 1.0), obs=x[:, 0])

        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("y", dist.Binomial(3, logits=x.new_zeros(x.shape[0])))

    program = Counts()
    assert refine_local_guide(program.model, program.guide, torch.zeros(4, 2, dtype=torch.float64), steps=2) is None
