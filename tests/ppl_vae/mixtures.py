"""Programs with a discrete latent whose answers are known: a mixture of probabilistic PCAs, a Gaussian mixture.

Mixture of pPCAs (C classes, z of L dims, x of D dims)::

    y ~ Cat(π),  z | y ~ N(μ_y, I),  x | z ~ N(W z + b, σ² I)
    =>  log p(x) = log Σ_y π_y N(x; W μ_y + b, W Wᵀ + σ² I)
        p(z | x, y) = N(M⁻¹ (Wᵀ (x − b) / σ² + μ_y), M⁻¹),  M = Wᵀ W / σ² + I
        p(y | x) ∝ π_y N(x; W μ_y + b, W Wᵀ + σ² I)

The guide enumerates y (``infer={"enumerate": "parallel"}``) from the exact p(y | x) (or a
tempered one) and proposes z from p(z | x, y) with its spread scaled by ``width``.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class MixturePPCA(nn.Module):
    def __init__(self, D=4, L=2, C=3, sigma=0.5, seed=0, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(D, L, generator=g, dtype=dtype))
        self.b = nn.Parameter(torch.randn(D, generator=g, dtype=dtype))
        self.mu = nn.Parameter(3 * torch.randn(C, L, generator=g, dtype=dtype))
        self.logits = nn.Parameter(torch.randn(C, generator=g, dtype=dtype))
        self.sigma, self.C, self.L = sigma, C, L

    def model(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=self.logits), obs=y)
            z = pyro.sample("z", dist.Normal(self.mu[y], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def marginals(self) -> dist.MultivariateNormal:
        """p(x | y) for every y: batch shape (C,)."""
        D = self.W.shape[0]
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(D, dtype=self.W.dtype)
        return dist.MultivariateNormal(self.mu @ self.W.T + self.b, cov)

    def log_px(self, x):
        joint = self.marginals().log_prob(x[:, None, :]) + torch.log_softmax(self.logits, -1)  # (B, C)
        return torch.logsumexp(joint, -1)

    def posterior_y(self, x):
        return torch.log_softmax(self.marginals().log_prob(x[:, None, :]) + torch.log_softmax(self.logits, -1), -1)

    def posterior_z(self, x, y):
        """p(z | x, y): loc (..., L) for y of any shape, covariance (L, L)."""
        M = self.W.T @ self.W / self.sigma**2 + torch.eye(self.L, dtype=self.W.dtype)
        cov = torch.linalg.inv(M)
        loc = ((x - self.b) @ self.W / self.sigma**2 + self.mu[y]) @ cov
        return loc, cov

    def sample(self, n, generator=None):
        y = torch.distributions.Categorical(logits=self.logits.detach()).sample((n,))
        z = self.mu.detach()[y] + torch.randn(n, self.L, dtype=self.W.dtype, generator=generator)
        noise = self.sigma * torch.randn(n, self.W.shape[0], dtype=self.W.dtype, generator=generator)
        return (z @ self.W.detach().T + self.b.detach() + noise), y


class MixtureGuide(nn.Module):
    """y from p(y | x) (tempered by ``temperature``), enumerated; z from p(z | x, y) with its spread times ``width``."""

    def __init__(self, mixture: MixturePPCA, width=1.0, temperature=1.0, enumerate_y=True):
        super().__init__()
        self.mixture, self.width, self.temperature = mixture, width, temperature
        self.infer = {"enumerate": "parallel"} if enumerate_y else {}

    def guide(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            if y is None:
                logits = self.mixture.posterior_y(x) / self.temperature
                y = pyro.sample("y", dist.Categorical(logits=logits), infer=dict(self.infer))
            loc, cov = self.mixture.posterior_z(x, y)
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=self.width * torch.linalg.cholesky(cov)))


class AmortizedMixtureGuide(nn.Module):
    """q(y|x) from a small network, enumerated; q(z|x, y) = N(x A_y + c_y, diag s_y²), holding p(z|x, y)'s mean."""

    def __init__(self, D=4, L=2, C=3, seed=0, dtype=torch.float64, enumerate_y=True):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.classifier = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, C)).to(dtype)
        self.A = nn.Parameter(0.1 * torch.randn(C, D, L, generator=g, dtype=dtype))
        self.c = nn.Parameter(0.1 * torch.randn(C, L, generator=g, dtype=dtype))
        self.raw_scale = nn.Parameter(torch.zeros(C, L, dtype=dtype))
        self.infer = {"enumerate": "parallel"} if enumerate_y else {}

    def posterior_z(self, x, y):
        loc = (x[..., None, :] @ self.A[y]).squeeze(-2) + self.c[y]  # (..., B, L)
        return loc, torch.nn.functional.softplus(self.raw_scale[y]) + 1e-3

    def guide(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample("y", dist.Categorical(logits=self.classifier(x)), infer=dict(self.infer))
            loc, scale = self.posterior_z(x, y)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class MixtureVAE(nn.Module):
    """A learnable mixture of pPCAs with an amortized guide: the pair the trainer fits."""

    def __init__(self, D=4, L=2, C=3, seed=0, enumerate_y=True):
        super().__init__()
        self.mixture = MixturePPCA(D, L, C, seed=seed)
        self.encoder = AmortizedMixtureGuide(D, L, C, seed=seed, enumerate_y=enumerate_y)

    def model(self, x, y=None):
        return self.mixture.model(x, y)

    def guide(self, x, y=None):
        return self.encoder.guide(x, y)
