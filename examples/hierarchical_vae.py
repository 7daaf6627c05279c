"""A user's own program: a two-layer hierarchical VAE, z2 -> z1 -> x.

    p(z2) = N(0, I),  p(z1 | z2) = N(μ(z2), diag s(z2)²),  p(x | z1) = N(f(z1), σ² I)
    q(z1 | x) = N(μ(x), diag s(x)²),  q(z2 | z1) = N(μ(z1), diag s(z1)²)

It follows the contract in ``ppl_vae/contracts.py`` and nothing else: ``factory(data_dim, latent_dim)``
returns a module with ``model(x)`` and ``guide(x)``, one ``pyro.plate("data")``, the same
latent site names in both. The bench trains, checkpoints, samples and evaluates it without
a line written for it::

    ppl-vae fit --model examples/hierarchical_vae.py:hierarchical --out runs/hvae

Model and guide register the module with ``pyro.module("hvae", self)`` under one name, as in
Pyro's deep Markov model example, so ``pyro.infer.SVI`` trains it as written too.
"""

import pyro
import pyro.distributions as dist
import torch.nn.functional as F
from torch import nn


def mlp(n_in, n_out, hidden=128):
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def normal(params):
    loc, raw = params.chunk(2, dim=-1)
    return dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1)


class HierarchicalVAE(nn.Module):
    def __init__(self, data_dim, latent_dim, sigma=0.1):
        super().__init__()
        self.z2_dim = max(latent_dim // 2, 1)
        self.sigma = sigma
        self.p_z1 = mlp(self.z2_dim, 2 * latent_dim)
        self.decoder = mlp(latent_dim, data_dim)
        self.q_z1 = mlp(data_dim, 2 * latent_dim)
        self.q_z2 = mlp(latent_dim, 2 * self.z2_dim)

    def model(self, x):
        pyro.module("hvae", self)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(self.z2_dim), 1.0).to_event(1))
            z1 = pyro.sample("z1", normal(self.p_z1(z2)))
            pyro.sample("x", dist.Normal(self.decoder(z1), self.sigma).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("hvae", self)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", normal(self.q_z1(x)))
            pyro.sample("z2", normal(self.q_z2(z1)))


def hierarchical(data_dim: int, latent_dim: int) -> HierarchicalVAE:
    return HierarchicalVAE(data_dim, latent_dim)
