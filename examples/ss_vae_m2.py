r"""A user's own program: the semi-supervised M2 model of Kingma et al. 2014 (arXiv:1406.5298).

.. math::

    p(y) = \mathrm{Cat}(1/C), \quad p(z) = N(0, I), \quad p(x \mid y, z) = \mathrm{Bernoulli}(f(y, z)),
    \qquad
    q(y \mid x) = \mathrm{Cat}(\pi(x)), \quad q(z \mid x, y) = N(\mu(x, y), \mathrm{diag}\, s(x, y)^2)

The class label y is *observed* for a labelled batch (``y`` given: class indices) and *latent*
for an unlabelled one (``y=None``): the guide then proposes it from the classifier q(y|x),
marked ``infer={"enumerate": "parallel"}`` so that ``--elbo traceenum`` sums the C values out
exactly (eq. 7 of the paper) instead of sampling them. Kingma et al.'s classification term
(eq. 9), :math:`\alpha\,\log q(y \mid x)` on labelled points, is a ``pyro.factor`` of the model
that only labelled batches reach, so the held-out log p(x) (unlabelled test points) does not
contain it.

It follows the contract in ``ppl_vae/contracts.py``: the networks broadcast over the leading
particle and enumeration dims (:func:`joined`), every site sits in ``pyro.plate("data")``.
The bench trains it with labels for 3000 points, balanced over classes::

    ppl-vae fit --model examples/ss_vae_m2.py:m2 --data mnist --labels 3000 --elbo traceenum \
        --latent-dim 50 --epochs 50 --batch-size 200 --lr 0.0004 --out runs/m2
    ppl-vae evaluate runs/m2        # accuracy of argmax q(y|x) on the test split, log p(x), ...

The pixels are grey values in [0, 1] under a Bernoulli likelihood (``validate_args=False``),
as in Pyro's ``examples/vae/ss_vae_M2.py``; log p(x) is then a number to compare between such
models, not a likelihood of binarized MNIST.
"""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Softplus(), nn.Linear(hidden, n_out))


def joined(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate along the last dim after broadcasting the leading (particle, enumeration, batch) dims."""
    batch = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(batch + t.shape[-1:]) for t in tensors], dim=-1)


class M2(nn.Module):
    def __init__(self, data_dim: int, latent_dim: int, num_classes: int, hidden: int = 500, alpha: float = 46.0):
        super().__init__()
        self.latent_dim, self.num_classes, self.alpha = latent_dim, num_classes, alpha
        self.classifier = mlp(data_dim, num_classes, hidden)  # logits of q(y | x)
        self.encoder = mlp(data_dim + num_classes, 2 * latent_dim, hidden)  # q(z | x, y)
        self.decoder = mlp(latent_dim + num_classes, data_dim, hidden)  # logits of p(x | y, z)

    def one_hot(self, y, like: torch.Tensor):
        return None if y is None else F.one_hot(y, self.num_classes).to(like.dtype)

    def model(self, x, y=None):
        y = self.one_hot(y, x)
        with pyro.plate("data", x.shape[0]):
            prior_y = dist.OneHotCategorical(logits=x.new_zeros(self.num_classes))
            y_value = pyro.sample("y", prior_y, obs=y)  # observed when labelled, latent when not
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            logits = self.decoder(joined(z, y_value))
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=x)
            if y is not None and self.alpha:  # Kingma et al.'s eq. 9: train the classifier on the labels too
                log_q = dist.OneHotCategorical(logits=self.classifier(x)).log_prob(y)
                pyro.factor("classification", self.alpha * log_q)

    def guide(self, x, y=None):
        y = self.one_hot(y, x)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                q_y = dist.OneHotCategorical(logits=self.classifier(x))
                y = pyro.sample("y", q_y, infer={"enumerate": "parallel"})
            loc, raw = self.encoder(joined(x, y)).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1))


def m2(data_dim: int, latent_dim: int, num_classes: int | None = None) -> M2:
    """The bench's factory: C from the data set's labels (10 for MNIST and digits)."""
    return M2(data_dim, latent_dim, num_classes or 10)


def m2_small(data_dim: int, latent_dim: int, num_classes: int | None = None) -> M2:
    """A small M2 for tests and the digits data set."""
    return M2(data_dim, latent_dim, num_classes or 10, hidden=64, alpha=5.0)
