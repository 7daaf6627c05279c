r"""Priors p(z): modules whose ``forward()`` returns a distribution with event shape ``(L,)``.

- :class:`StandardNormal`: :math:`p(z) = \mathcal N(0, I)`.
- :class:`MixtureOfGaussians`: :math:`p(z) = \sum_c \pi_c \mathcal N(z; \mu_c, \operatorname{diag}\sigma_c^2)`,
  all learned.
- :class:`VampPrior`: :math:`p(z) = \frac1C \sum_c q(z \mid u_c)` at learned pseudo-inputs
  (Tomczak & Welling 2018, arXiv:1705.07120).
- :class:`FlowPrior`: a masked autoregressive flow over :math:`\mathcal N(0, I)`
  (Papamakarios et al. 2017, arXiv:1705.07057).

The registry :data:`PRIORS` maps a command-line name to a constructor taking
``(latent_dim, encoder, pseudo_inputs, n_components, flows)``; each constructor uses the
arguments it needs (``pseudo_inputs`` is a function, called only by the VampPrior).
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

__all__ = ["StandardNormal", "MixtureOfGaussians", "VampPrior", "FlowPrior", "PRIORS"]


class StandardNormal(nn.Module):
    """:math:`p(z) = \\mathcal N(0, I_L)`."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class MixtureOfGaussians(nn.Module):
    """A learned mixture of ``n_components`` diagonal Gaussians."""

    def __init__(self, latent_dim: int, n_components: int = 10):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.loc = nn.Parameter(torch.randn(n_components, latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(n_components, latent_dim))

    def forward(self) -> dist.Distribution:
        components = dist.Normal(self.loc, self.log_scale.exp()).to_event(1)  # batch (C,), event (L,)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


class VampPrior(nn.Module):
    """The variational mixture of posteriors: an equal-weight mixture of ``q(z | u_c)``.

    This prior shares the guide's encoder by design: ``encoder.base(u)`` must return a
    distribution with batch shape ``(C,)`` (for flow guides this is the flow's base
    ``q0(z | u)``, whose density is available in closed form).

    Under ``pyro.infer.SVI`` the encoder's parameters are registered by the model
    (``model$$$prior.encoder.…``) and by the guide (``guide$$$encoder.…``): two names for each
    tensor, as in ``state_dict()``. SVI collects the tensors it steps as a set and ``pyro.optim``
    keeps one optimizer per tensor, so each is stepped once, with the gradient of both uses.

    Args:
        encoder: the guide's encoder (a module with a ``base(x)`` method).
        pseudo_inputs: initial pseudo-inputs ``(C, D)``, learned.
    """

    def __init__(self, encoder: nn.Module, pseudo_inputs: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.pseudo_inputs = nn.Parameter(pseudo_inputs.clone())

    def forward(self) -> dist.Distribution:
        components = self.encoder.base(self.pseudo_inputs)  # batch (C,), event (L,)
        n = self.pseudo_inputs.shape[0]
        mixing = dist.Categorical(logits=torch.zeros(n, device=self.pseudo_inputs.device))
        return dist.MixtureSameFamily(mixing, components)


class FlowPrior(nn.Module):
    """:math:`\\mathcal N(0, I)` pushed through ``n_flows`` masked autoregressive transforms.

    The transforms are inverted inverse-autoregressive ones, so the density of any z
    (what the ELBO needs for every guide sample) costs one network pass, and only
    sampling from the prior is sequential in L.
    """

    def __init__(self, latent_dim: int, n_flows: int = 2):
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        self.flows = nn.ModuleList(T.affine_autoregressive(latent_dim) for _ in range(n_flows))

    def forward(self) -> dist.Distribution:
        base = dist.Normal(self.loc, self.scale).to_event(1)
        return dist.TransformedDistribution(base, [flow.inv for flow in self.flows])


PRIORS: dict[str, Callable[..., nn.Module]] = {
    "standard": lambda latent_dim, **_: StandardNormal(latent_dim),
    "mog": lambda latent_dim, n_components, **_: MixtureOfGaussians(latent_dim, n_components),
    "vamp": lambda latent_dim, encoder, pseudo_inputs, **_: VampPrior(encoder, pseudo_inputs()),
    "flow": lambda latent_dim, flows, **_: FlowPrior(latent_dim, max(flows, 1)),
}
"""Name on the command line -> constructor ``(latent_dim, encoder, pseudo_inputs, n_components, flows)``.

``pseudo_inputs`` is a function returning initial pseudo-inputs ``(C, D)``; only priors that need
them call it (it draws from the RNG)."""
