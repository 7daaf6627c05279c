r"""The generative program p(z) p(x | z).

.. math::

    z_i \sim p(z), \qquad x_i \mid z_i \sim p(x \mid f_\theta(z_i)), \qquad i = 1..B,

written as a Pyro model with one ``pyro.plate("data")`` and the sites ``"z"`` and ``"x"``.
The canonical instance has ``p(z) = N(0, I)`` and ``p(x | z) = N(f(z), σ² I)`` with σ
fixed. The program never knows the data set's size: the bench scales minibatches.

The model registers every parameter of its parts with ``pyro.module("model", self)``, Pyro's
idiom, so ``pyro.infer.SVI`` with any ELBO and any ``pyro.optim`` optimizer trains it as written.
"""

from __future__ import annotations

import pyro
import torch
from torch import nn

__all__ = ["VAE"]


class VAE(nn.Module):
    """p(z) p(x | z) from a prior, a decoder network and a likelihood.

    Args:
        prior: module, ``prior()`` returns p(z) with event shape ``(L,)``.
        decoder: network ``(..., L) -> (..., D * likelihood.params_per_pixel)``.
        likelihood: module, ``likelihood(decoder(z))`` returns p(x | z) with event shape ``(D,)``.

    Example:
        >>> from ppl_vae.models import MLP, StandardNormal, LIKELIHOODS
        >>> vae = VAE(StandardNormal(2), MLP([2, 8, 4]), LIKELIHOODS["normal"](data_dim=4, sigma=0.1))
        >>> tr = pyro.poutine.trace(vae.model).get_trace(torch.zeros(3, 4))
        >>> tr.nodes["z"]["value"].shape, tr.nodes["x"]["is_observed"]
        (torch.Size([3, 2]), True)
        >>> tr.nodes["model$$$decoder.0.weight"]["type"]
        'param'
    """

    def __init__(self, prior: nn.Module, decoder: nn.Module, likelihood: nn.Module):
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood

    def model(self, x: torch.Tensor) -> None:
        pyro.module("model", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
