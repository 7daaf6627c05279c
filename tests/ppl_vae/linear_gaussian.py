"""Probabilistic PCA as a Pyro program, with its exact posterior as a guide: every number is known.

x = W z + b + σ ε,  z ~ N(0, I)   =>   log p(x) = log N(x; b, W Wᵀ + σ² I)
q*(z | x) = N(M⁻¹ Wᵀ (x − b), σ² M⁻¹),  M = Wᵀ W + σ² I
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae.data.datasets import Dataset
from ppl_vae.diagnostics.estimators import active_units, importance_sample
from ppl_vae.inference.trainer import Trainer
from ppl_vae.runs.build import build_program
from tests.conftest import tiny_config


class PPCA(nn.Module):
    def __init__(self, W: torch.Tensor, b: torch.Tensor, sigma: float):
        super().__init__()
        self.register_buffer("W", W)
        self.register_buffer("b", b)
        self.sigma = sigma

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.W.shape[1]), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def log_px(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(len(self.b), dtype=x.dtype)
        return dist.MultivariateNormal(self.b, cov).log_prob(x)

    def posterior(self, x):
        L = self.W.shape[1]
        M = self.W.T @ self.W + self.sigma**2 * torch.eye(L, dtype=x.dtype)
        loc = torch.linalg.solve(M, self.W.T @ (x - self.b).T).T  # (B, L)
        return loc, self.sigma**2 * torch.linalg.inv(M)

    def sample(self, n, generator=None):
        z = torch.randn(n, self.W.shape[1], dtype=self.W.dtype, generator=generator)
        return z @ self.W.T + self.b + self.sigma * torch.randn(n, len(self.b), dtype=self.W.dtype, generator=generator)


class PosteriorGuide(nn.Module):
    """The exact posterior, optionally with its spread scaled by ``width`` and its mean shifted."""

    def __init__(self, ppca: PPCA, width: float = 1.0, shift: float = 0.0):
        super().__init__()
        self.ppca, self.width, self.shift = ppca, width, shift

    def guide(self, x):
        loc, cov = self.ppca.posterior(x)
        scale_tril = self.width * torch.linalg.cholesky(cov)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc + self.shift, scale_tril=scale_tril))


def make(data_dim=5, latent_dim=2, sigma=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(data_dim, latent_dim, dtype=torch.float64, generator=g)
    b = torch.randn(data_dim, dtype=torch.float64, generator=g)
    return PPCA(W, b, sigma)


# --- a linear VAE on data with known covariance eigenvalues (Lucas et al. 2019) ---

EIGENVALUES = np.array([3.0, 1.0, 0.4, 0.1, 0.01, 0.005])


def synthetic(n=3000, seed=0):
    """Gaussian data with the covariance eigenvalues above, in a random rotation."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    x = rng.normal(size=(n, 6)) * np.sqrt(EIGENVALUES) @ q.T
    x = torch.from_numpy(x.astype(np.float32))
    return Dataset("synthetic", x[: n - 500], x[n - 500 :], (6,))


def train_linear_vae(sigma2: float, epochs: int = 150):
    """Train the linear VAE with fixed σ² and return (measured, pPCA-predicted) active units."""
    data = synthetic()
    config = tiny_config(
        model={"network": "linear", "latent_dim": 5, "sigma": float(np.sqrt(sigma2))},
        train={"epochs": epochs, "batch_size": 100, "lr": 1e-2},
    )
    program = build_program(config, 6, (6,))
    Trainer(program, config.train, data.train, data.test, progress=False).fit()
    est = importance_sample(program.model, program.guide, data.test, k=1000)
    measured, _ = active_units(est.latent_mean)
    sample_eigenvalues = np.linalg.eigvalsh(np.cov(data.train.numpy().T))
    return measured, int((sample_eigenvalues > sigma2).sum())


# --- probabilistic PCA whose mean is a global latent: x = W z + μ + σ ε, μ ~ N(0, τ² I) ---


class GlobalMeanPPCA(nn.Module):
    r"""pPCA with its mean μ a global latent, q(μ) = N(m, diag s²), and q(z | x, μ) the exact local posterior.

    Given μ the local posterior is exact, so p̂(x | μ) is exact at any K and

    .. math:: \log \mathbb E_{q(\mu)}[p(x \mid \mu)] = \log N(x; m, W W^\top + \sigma^2 I + \operatorname{diag}(s^2)).
    """

    def __init__(self, ppca: PPCA, m: torch.Tensor, s: torch.Tensor, tau: float = 1.0):
        super().__init__()
        self.ppca, self.tau = ppca, tau
        self.m = nn.Parameter(m.clone())
        self.log_s = nn.Parameter(s.log())

    def model(self, x):
        W, sigma = self.ppca.W, self.ppca.sigma
        mu = pyro.sample("mu", dist.Normal(x.new_zeros(W.shape[0]), self.tau).to_event(1))  # (…, D), global
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(W.shape[1]), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + mu, sigma).to_event(1), obs=x)

    def guide(self, x):
        W, sigma = self.ppca.W, self.ppca.sigma
        mu = pyro.sample("mu", dist.Normal(self.m, self.log_s.exp()).to_event(1))
        L = W.shape[1]
        M = W.T @ W + sigma**2 * torch.eye(L, dtype=x.dtype)
        gain = W @ torch.linalg.inv(M)  # (D, L): E[z | x, μ] = (x - μ) W M⁻¹
        scale_tril = torch.linalg.cholesky(sigma**2 * torch.linalg.inv(M))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal((x - mu) @ gain, scale_tril=scale_tril))

    def covariance(self, dtype=torch.float64):
        W, sigma = self.ppca.W, self.ppca.sigma
        return W @ W.T + sigma**2 * torch.eye(W.shape[0], dtype=dtype)

    def log_predictive(self, x):
        """log N(x; m, W Wᵀ + σ² I + diag s²): the posterior predictive under q(μ)."""
        s2 = self.log_s.detach().exp() ** 2
        return dist.MultivariateNormal(self.m.detach(), self.covariance() + torch.diag(s2)).log_prob(x)

    def expected_log_lik(self, x):
        """E_q(μ)[log N(x; μ, C)] = log N(x; m, C) - ½ tr(C⁻¹ diag s²): the ELBO with the exact local posterior."""
        C = self.covariance()
        s2 = self.log_s.detach().exp() ** 2
        trace = (torch.linalg.inv(C).diagonal() * s2).sum()
        return dist.MultivariateNormal(self.m.detach(), C).log_prob(x) - 0.5 * trace


def make_global(data_dim=3, latent_dim=2, sigma=0.5, s=0.3, seed=0):
    ppca = make(data_dim, latent_dim, sigma, seed)
    m = ppca.b.clone()
    return GlobalMeanPPCA(ppca, m, torch.full((data_dim,), s, dtype=torch.float64), tau=1.0)
