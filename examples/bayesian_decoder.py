r"""A Bayesian decoder as a user program: a prior on the decoder's output layer, a hyperprior on its scale.

.. math::

    s \sim \mathrm{LogNormal}(0, 1), \quad
    W \sim \mathcal N(0, s^2 I), \quad b \sim \mathcal N(0, I), \qquad
    z_i \sim \mathcal N(0, I), \quad x_i \mid z_i, W, b \sim \mathcal N(W h(z_i) + b, \sigma^2 I)

(Kingma & Welling 2014, arXiv:1312.6114, appendix F, "full variational Bayes"). The sites
``w_out``, ``b_out`` and ``prior_scale`` sit outside the plate ``"data"``: they are global
latents, drawn once per data set, and the guide holds their q — mean-field Normals for the
weights, a LogNormal for the scale:
:math:`q(W, b, s, z_{1:N} \mid x_{1:N}) = q(W)\,q(b)\,q(s) \prod_i q(z_i \mid x_i)`.
Nothing in the program is written for the bench; it scales the local sites by N/B itself,
and reports held-out log p(x) as the posterior predictive log E_q[p(x | W, b)]::

    ppl-vae fit --model examples/bayesian_decoder.py:bayesian_decoder --out runs/bayes-decoder
    ppl-vae evaluate runs/bayes-decoder --trust-program --global-draws 10
"""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn


class BayesianDecoderVAE(nn.Module):
    def __init__(self, data_dim: int, latent_dim: int, hidden_dim: int = 128, sigma: float = 0.1):
        super().__init__()
        self.sigma = sigma
        self.body = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.ReLU())  # h(z): a point estimate
        self.encoder = nn.Sequential(nn.Linear(data_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 2 * latent_dim))
        out = nn.Linear(hidden_dim, data_dim)  # its initial weights start q(W, b)
        self.w_loc, self.b_loc = nn.Parameter(out.weight.detach().clone()), nn.Parameter(out.bias.detach().clone())
        self.w_raw = nn.Parameter(torch.full_like(out.weight, -7.0))  # softplus(-7) ≈ 1e-3
        self.b_raw = nn.Parameter(torch.full_like(out.bias, -7.0))
        self.scale_loc, self.scale_raw = nn.Parameter(torch.zeros(())), nn.Parameter(torch.tensor(-3.0))
        self.latent_dim = latent_dim

    def model(self, x):
        pyro.module("model", self)
        scale = pyro.sample("prior_scale", dist.LogNormal(x.new_zeros(()), 1.0))
        w = pyro.sample("w_out", dist.Normal(x.new_zeros(self.w_loc.shape), scale[..., None, None]).to_event(2))
        b = pyro.sample("b_out", dist.Normal(x.new_zeros(self.b_loc.shape), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            h = self.body(z)  # (..., B, H); w: (..., 1, D, H) with a leading particle dim, or (D, H)
            mean = (h.unsqueeze(-2) @ w.transpose(-1, -2)).squeeze(-2) + b
            pyro.sample("x", dist.Normal(mean, self.sigma).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("guide", self)
        pyro.sample("prior_scale", dist.LogNormal(self.scale_loc, F.softplus(self.scale_raw)))
        pyro.sample("w_out", dist.Normal(self.w_loc, F.softplus(self.w_raw)).to_event(2))
        pyro.sample("b_out", dist.Normal(self.b_loc, F.softplus(self.b_raw)).to_event(1))
        loc, raw = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1))


def bayesian_decoder(data_dim: int, latent_dim: int) -> BayesianDecoderVAE:
    return BayesianDecoderVAE(data_dim, latent_dim)
