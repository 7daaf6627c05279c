r"""The amortized guide q(z | x): an encoder that returns a distribution, sampled in the model's plate.

.. math::

    q_\phi(z_{1:B} \mid x_{1:B}) = \prod_{i=1}^B q_\phi(z_i \mid x_i)

With global latents θ in the model (a Bayesian decoder's weights), the guide also holds
their q(θ), drawn once per data set outside the plate: :class:`MeanFieldNormal`,
:math:`q(\theta) = \prod_j \mathcal N(\theta_j; \mu_j, \sigma_j^2)` (Blundell et al. 2015,
arXiv:1505.05424), and :math:`q(z_{1:B}, \theta \mid x_{1:B}) = q(\theta) \prod_i q(z_i \mid x_i)`.

The guide registers its encoder (network, posterior head, flow transforms) with
``pyro.module("guide", self)``, so ``pyro.infer.SVI`` trains it as written; buffers (flow
permutations) are not parameters and stay in the module.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Encoder", "AmortizedGuide", "MeanFieldNormal"]


class MeanFieldNormal(nn.Module):
    """``forward()`` returns ``{site: q(θ)}``: a Normal with free mean and scale for every element of each site.

    Args:
        initial: ``{site: starting mean}`` (the shape of each site's value).
        scale: the starting standard deviation (small: training starts near a point estimate).

    Example:
        >>> q = MeanFieldNormal({"w": torch.zeros(2, 3)})
        >>> q()["w"].event_shape, round(q()["w"].base_dist.scale[0, 0].item(), 4)
        (torch.Size([2, 3]), 0.001)
    """

    def __init__(self, initial: dict[str, torch.Tensor], scale: float = 1e-3):
        super().__init__()
        self.names = list(initial)
        self.loc = nn.ParameterDict({n: nn.Parameter(v.detach().clone()) for n, v in initial.items()})
        raw = math.log(math.expm1(scale))  # softplus⁻¹(scale)
        self.raw_scale = nn.ParameterDict({n: nn.Parameter(torch.full_like(v, raw)) for n, v in initial.items()})

    def forward(self) -> dict[str, dist.Distribution]:
        return {
            n: dist.Normal(self.loc[n], F.softplus(self.raw_scale[n])).to_event(self.loc[n].dim()) for n in self.names
        }


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

    def __init__(self, encoder: Encoder, global_posterior: MeanFieldNormal | None = None):
        super().__init__()
        self.encoder = encoder
        self.global_posterior = global_posterior  # q(θ) of the model's global latents, or None

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("guide", self)
        if self.global_posterior is not None:  # θ ~ q(θ), once per data set: outside the plate, as in the model
            for name, q in self.global_posterior().items():
                pyro.sample(name, q)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.encoder(x))
