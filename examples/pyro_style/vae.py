r"""Pyro's VAE example as its users write it: sites ``latent`` and ``obs``, ``pyro.module`` at the top.

.. math::

    z \sim N(0, I), \qquad x \mid z \sim \mathrm{Bernoulli}(f(z)), \qquad
    q(z \mid x) = N(\mu(x), \mathrm{diag}\, s(x)^2)

The same program as pyro-ppl/pyro ``examples/vae/vae.py`` (Kingma & Welling 2014,
arXiv:1312.6114) in its names and structure: an ``Encoder`` and a ``Decoder`` module, the model
and guide registering them with ``pyro.module``, a plate ``"data"``, the latent site
``"latent"`` and the observed site ``"obs"``. Nothing in it is written for the bench::

    ppl-vae fit --model examples/pyro_style/vae.py:make --out runs/pyro-vae

Grey pixels in [0, 1] under a Bernoulli likelihood (``validate_args=False``), as in Pyro's example.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self, data_dim: int, z_dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(data_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        hidden = self.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))  # loc and scale of q(z|x)


class Decoder(nn.Module):
    def __init__(self, data_dim: int, z_dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, data_dim)
        self.softplus = nn.Softplus()

    def forward(self, z):
        return self.fc21(self.softplus(self.fc1(z)))  # logits of p(x|z)


class VAE(nn.Module):
    def __init__(self, data_dim: int, z_dim: int, hidden_dim: int = 64):
        super().__init__()
        self.encoder = Encoder(data_dim, z_dim, hidden_dim)
        self.decoder = Decoder(data_dim, z_dim, hidden_dim)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(self.z_dim)
            z_scale = x.new_ones(self.z_dim)
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            logits = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def make(data_dim: int, latent_dim: int) -> VAE:
    return VAE(data_dim, latent_dim)
