r"""A user's own program: a class-conditional generator (a conditional VAE on the label).

.. math::

    p(y) = \mathrm{Cat}(1/C), \quad p(z) = N(0, I), \quad p(x \mid y, z) = \mathrm{Bernoulli}(f(y, z)),
    \qquad q(z \mid x, y) = N(\mu(x, y), \mathrm{diag}\, s(x, y)^2)

Trained with every label (``--labels all``), the program is conditioned on y: the bench
passes the labels with every training and test batch, log p(x) is log p(x, y), and the report
shows samples of every class (``figures/samples_by_class.png``: one row per y). Without a label
(``y=None``) the model draws one from p(y), so it also samples unconditionally::

    ppl-vae fit --model examples/conditional_vae.py:conditional --labels all --out runs/cvae-y

Grey-level pixels in [0, 1] under a Bernoulli likelihood (``validate_args=False``), as in the
M2 and quadrant examples.
"""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def joined(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate along the last dim after broadcasting the leading (particle, batch) dims."""
    batch = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(batch + t.shape[-1:]) for t in tensors], dim=-1)


class ConditionalVAE(nn.Module):
    def __init__(self, data_dim: int, latent_dim: int, num_classes: int, hidden: int = 500):
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.encoder = mlp(data_dim + num_classes, 2 * latent_dim, hidden)
        self.decoder = mlp(latent_dim + num_classes, data_dim, hidden)

    def model(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            prior_y = dist.OneHotCategorical(logits=x.new_zeros(self.num_classes))
            y = pyro.sample("y", prior_y, obs=None if y is None else F.one_hot(y, self.num_classes).to(x.dtype))
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            logits = self.decoder(joined(z, y))
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=x)

    def guide(self, x, y=None):
        if y is None:
            raise ValueError("the conditional guide needs the label y: train with --labels all")
        y = F.one_hot(y, self.num_classes).to(x.dtype)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.encoder(joined(x, y)).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1))


def conditional(data_dim: int, latent_dim: int, num_classes: int | None = None) -> ConditionalVAE:
    return ConditionalVAE(data_dim, latent_dim, num_classes or 10)


def conditional_small(data_dim: int, latent_dim: int, num_classes: int | None = None) -> ConditionalVAE:
    return ConditionalVAE(data_dim, latent_dim, num_classes or 10, hidden=64)
