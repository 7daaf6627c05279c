r"""The two-layer hierarchical generative program p(z2) p(z1 | z2) p(x | z1, z2).

.. math::

    z_{2,i} \sim p(z_2), \qquad
    z_{1,i} \mid z_{2,i} \sim \mathcal N\big(\mu(z_{2,i}), \operatorname{diag} s(z_{2,i})^2\big), \qquad
    x_i \mid z_{1,i}, z_{2,i} \sim p\big(x \mid f_\theta(z_{1,i}, z_{2,i})\big),

written as a Pyro model with one ``pyro.plate("data")`` and the sites ``"z2"``, ``"z1"`` and
``"x"``; it registers its parts with ``pyro.module("model", self)``, so ``pyro.infer.SVI`` trains
it as written. This is the VampPrior paper's HVAE: the prior on the top layer :math:`z_2` is any
prior module (the standard Normal or the VampPrior, whose components are :math:`q(z_2 \mid u_c)`),
and the decoder sees both layers. Its guide is :class:`ppl_vae.guides.HierarchicalGuide`,
:math:`q(z_2 \mid x)\, q(z_1 \mid x, z_2)`.

References:
    Tomczak & Welling 2018, "VAE with a VampPrior", AISTATS, arXiv:1705.07120 (Sec. 3.2, Fig. 1b).
"""

from __future__ import annotations

import pyro
import torch
from torch import nn

__all__ = ["HierarchicalVAE"]


class HierarchicalVAE(nn.Module):
    """p(z2) p(z1 | z2) p(x | z1, z2) from a prior, a conditional, a two-input decoder and a likelihood.

    Args:
        prior: module, ``prior()`` returns p(z2) with event shape ``(L2,)``.
        conditional: module, ``conditional(z2)`` returns p(z1 | z2) with event shape ``(L1,)``.
        decoder: network ``(z1, z2) -> (..., D * likelihood.params_per_pixel)``.
        likelihood: module, ``likelihood(decoder(z1, z2))`` returns p(x | z1, z2) with event shape ``(D,)``.

    Example:
        >>> from ppl_vae.guides import DiagonalNormal, Encoder
        >>> from ppl_vae.models import LIKELIHOODS, GatedDense, Join, StandardNormal
        >>> conditional = Encoder(GatedDense(2, 8), DiagonalNormal(8, 3))
        >>> decoder = Join(GatedDense(3, 8), GatedDense(2, 8), nn.Linear(16, 4))
        >>> decoder.out_features = 4
        >>> vae = HierarchicalVAE(StandardNormal(2), conditional, decoder, LIKELIHOODS["bernoulli"](data_dim=4))
        >>> tr = pyro.poutine.trace(vae.model).get_trace(torch.zeros(5, 4))
        >>> tr.nodes["z2"]["value"].shape, tr.nodes["z1"]["value"].shape
        (torch.Size([5, 2]), torch.Size([5, 3]))
    """

    def __init__(self, prior: nn.Module, conditional: nn.Module, decoder: nn.Module, likelihood: nn.Module):
        super().__init__()
        self.prior, self.conditional = prior, conditional  # p(z2), p(z1 | z2)
        self.decoder, self.likelihood = decoder, likelihood  # p(x | z1)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("model", self)  # Pyro's idiom: pyro.infer.SVI then trains every part as written
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", self.prior())
            z1 = pyro.sample("z1", self.conditional(z2))
            pyro.sample("x", self.likelihood(self.decoder(z1, z2)), obs=x)
