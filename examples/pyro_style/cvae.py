r"""Pyro's conditional VAE as its users write it: the observed site ``y`` is a slice of x.

.. math::

    z \sim p(z \mid x_{in}), \qquad y = x_{out} \sim \mathrm{Bernoulli}(f(z)), \qquad
    q(z \mid x_{in}, x_{out})

The structure of pyro-ppl/pyro ``examples/cvae/cvae.py`` (Sohn, Lee & Yan 2015): a prior
network on the given pixels, a recognition network on the whole image, a generation network
for the rest. As there, the observed site is named ``"y"`` and holds only the pixels to
predict — here the bottom half of each image, ``x[:, half:]``, given the top half
``x[:, :half]`` — so no observed site holds the whole x. ``pyro.module`` registers the whole
module at the top of each program::

    ppl-vae fit --model examples/pyro_style/cvae.py:make --out runs/pyro-cvae
"""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def normal(params: torch.Tensor) -> dist.Distribution:
    loc, raw = params.chunk(2, dim=-1)
    return dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1)


class CVAE(nn.Module):
    def __init__(self, data_dim: int, z_dim: int, hidden: int = 64):
        super().__init__()
        self.half = data_dim // 2
        self.prior_net = mlp(self.half, 2 * z_dim, hidden)  # p(z | x_in)
        self.recognition_net = mlp(data_dim, 2 * z_dim, hidden)  # q(z | x_in, x_out)
        self.generation_net = mlp(z_dim, data_dim - self.half, hidden)  # logits of p(x_out | z)

    def model(self, x):
        pyro.module("cvae", self)
        given, wanted = x[:, : self.half], x[:, self.half :]
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", normal(self.prior_net(given)))
            logits = self.generation_net(z)
            pyro.sample("y", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=wanted)

    def guide(self, x):
        pyro.module("cvae", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", normal(self.recognition_net(x)))


def make(data_dim: int, latent_dim: int) -> CVAE:
    return CVAE(data_dim, latent_dim)
