r"""The amortized guide q(z | x): an encoder that returns a distribution, sampled in the model's plate.

.. math::

    q_\phi(z_{1:B} \mid x_{1:B}) = \prod_{i=1}^B q_\phi(z_i \mid x_i)

The guide registers its encoder (network, posterior head, flow transforms) with
``pyro.module("guide", self)``, so ``pyro.infer.SVI`` trains it as written; buffers (flow
permutations) are not parameters and stay in the module.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["Encoder", "AmortizedGuide"]


class Encoder(nn.Module):
    """``forward(x)`` returns q(z | x): a network h(x) followed by a posterior head.

    ``base(x)`` returns the head's closed-form base distribution (the posterior itself for
    Gaussian heads, q0 for flows), which the VampPrior uses as mixture components.
    """

    def __init__(self, net: nn.Module, head: nn.Module):
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        return self.head(self.net(x))

    def base(self, x: torch.Tensor) -> dist.Distribution:
        return self.head.base(self.net(x))


class AmortizedGuide(nn.Module):
    """The guide program with the model's plate and site names.

    Example:
        >>> from ppl_vae.models import MLP
        >>> from ppl_vae.guides import DiagonalNormal
        >>> g = AmortizedGuide(Encoder(MLP([4, 8]), DiagonalNormal(8, 2)))
        >>> pyro.poutine.trace(g.guide).get_trace(torch.zeros(3, 4)).nodes["z"]["value"].shape
        torch.Size([3, 2])
    """

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.encoder(x))
