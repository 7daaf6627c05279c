r"""A semi-supervised M2 written as Pyro's scANVI example writes its programs: a plate named ``batch``.

.. math::

    y \sim \mathrm{Cat}(1/C), \quad z \sim N(0, I), \quad x \mid y, z \sim \mathrm{Bernoulli}(f(y, z)),
    \qquad q(y \mid x)\, q(z \mid x, y)

The model of Kingma et al. 2014 (arXiv:1406.5298) in the idioms of pyro-ppl/pyro
``examples/scanvi.py`` and ``examples/vae/ss_vae_M2.py``: ``pyro.module`` at the top, the plate
over the batch named ``"batch"``, class labels turned into one-hot rows with ``F.one_hot``,
and y enumerated by the guide when it is not observed::

    ppl-vae fit --model examples/pyro_style/m2_batch.py:make --labels 300 --elbo traceenum --out runs/m2-batch

The bench finds the data plate by its size (the batch's); ``--data-plate batch`` names it.
"""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Softplus(), nn.Linear(hidden, n_out))


def joined(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate along the last dim after broadcasting the leading (enumeration, particle, batch) dims."""
    batch = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(batch + t.shape[-1:]) for t in tensors], dim=-1)


class M2(nn.Module):
    def __init__(self, data_dim: int, latent_dim: int, num_classes: int, hidden: int = 64, alpha: float = 5.0):
        super().__init__()
        self.latent_dim, self.num_classes, self.alpha = latent_dim, num_classes, alpha
        self.classifier = mlp(data_dim, num_classes, hidden)
        self.encoder = mlp(data_dim + num_classes, 2 * latent_dim, hidden)
        self.decoder = mlp(latent_dim + num_classes, data_dim, hidden)

    def model(self, x, y=None):
        pyro.module("m2", self)
        with pyro.plate("batch", len(x)):
            y_prior = dist.Categorical(logits=x.new_zeros(self.num_classes))
            labels = y
            y = pyro.sample("y", y_prior, obs=labels)
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            logits = self.decoder(joined(z, F.one_hot(y, self.num_classes).to(x.dtype)))
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=x)
            if labels is not None:  # Kingma et al.'s classification term on labelled points (their eq. 9)
                pyro.factor("classification", self.alpha * dist.Categorical(logits=self.classifier(x)).log_prob(labels))

    def guide(self, x, y=None):
        pyro.module("m2", self)
        with pyro.plate("batch", len(x)):
            if y is None:
                y = pyro.sample("y", dist.Categorical(logits=self.classifier(x)), infer={"enumerate": "parallel"})
            loc, raw = self.encoder(joined(x, F.one_hot(y, self.num_classes).to(x.dtype))).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1))


def make(data_dim: int, latent_dim: int, num_classes: int | None = None) -> M2:
    return M2(data_dim, latent_dim, num_classes or 10)
