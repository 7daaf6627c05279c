r"""The guide of the two-layer hierarchical VAE: q(z2 | x) q(z1 | x, z2).

.. math::

    q_\phi(z_{1}, z_{2} \mid x) = q_\phi(z_2 \mid x)\, q_\phi(z_1 \mid x, z_2),

top-down as the model is: :math:`z_2` is drawn first, from the encoder the VampPrior mixes,
then :math:`z_1` from a network that sees both :math:`x` and :math:`z_2`.

References:
    Tomczak & Welling 2018, "VAE with a VampPrior", AISTATS, arXiv:1705.07120 (Sec. 3.2).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .amortized import Encoder

__all__ = ["ConditionalEncoder", "HierarchicalGuide"]


class ConditionalEncoder(nn.Module):
    """``forward(x, z2)`` returns q(z1 | x, z2): a two-input network followed by a posterior head."""

    def __init__(self, net: nn.Module, head: nn.Module):
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, x: torch.Tensor, z2: torch.Tensor) -> dist.Distribution:
        return self.head(self.net(x, z2))


class HierarchicalGuide(nn.Module):
    """The guide program with the hierarchical model's plate and sites ``"z2"``, ``"z1"``.

    ``encoder`` is q(z2 | x), the encoder a VampPrior on z2 mixes; ``conditional`` is q(z1 | x, z2).

    Example:
        >>> from ppl_vae.models import GatedDense, Join
        >>> from ppl_vae.guides import DiagonalNormal
        >>> top = Encoder(GatedDense(4, 8), DiagonalNormal(8, 2))
        >>> net = Join(GatedDense(4, 8), GatedDense(2, 8), GatedDense(16, 8))
        >>> bottom = ConditionalEncoder(net, DiagonalNormal(8, 3))
        >>> tr = pyro.poutine.trace(HierarchicalGuide(top, bottom).guide).get_trace(torch.zeros(5, 4))
        >>> [name for name in tr.nodes if name.startswith("z")]
        ['z2', 'z1']
    """

    def __init__(self, encoder: Encoder, conditional: ConditionalEncoder):
        super().__init__()
        self.encoder = encoder
        self.conditional = conditional

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("guide", self)  # Pyro's idiom: pyro.infer.SVI then trains both encoders as written
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", self.encoder(x))
            pyro.sample("z1", self.conditional(x, z2))
