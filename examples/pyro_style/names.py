r"""A VAE whose site names are those of the bench's own outputs: ``chain``, ``draw``, ``pixel``, ``obs``...

.. math::

    z \sim N(0, I), \qquad x \mid z \sim N(f(z), \sigma^2 I), \qquad q(z \mid x) = N(\mu(x), \mathrm{diag}\, s(x)^2)

Site names are the user's. Each factory names the latent and the observed site after a word
ArviZ or the bench uses for something else (a dimension of the export, a group's name) or
with a character a file format treats specially (a dot, a slash); the whole bench must
take each one::

    ppl-vae fit --model examples/pyro_style/names.py:draw_pixel --out runs/names
"""

import pyro
import pyro.distributions as dist
import torch.nn.functional as F
from torch import nn


class Named(nn.Module):
    def __init__(self, data_dim: int, latent_dim: int, latent: str, observed: str, hidden: int = 64):
        super().__init__()
        self.latent, self.observed, self.latent_dim = latent, observed, latent_dim
        self.encoder = nn.Sequential(nn.Linear(data_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, data_dim))

    def model(self, x):
        pyro.module("named", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(self.latent, dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample(self.observed, dist.Normal(self.decoder(z), 0.2).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("named", self)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.encoder(x).chunk(2, dim=-1)
            pyro.sample(self.latent, dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1))


def draw_pixel(data_dim: int, latent_dim: int) -> Named:
    return Named(data_dim, latent_dim, latent="draw", observed="pixel")


def chain_y(data_dim: int, latent_dim: int) -> Named:
    return Named(data_dim, latent_dim, latent="chain", observed="y")


def obs_latent(data_dim: int, latent_dim: int) -> Named:
    return Named(data_dim, latent_dim, latent="obs", observed="latent")


def dotted(data_dim: int, latent_dim: int) -> Named:
    return Named(data_dim, latent_dim, latent="encoder.z", observed="decoder/x")
