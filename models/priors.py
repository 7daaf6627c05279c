r"""Priors p(z): modules whose ``forward()`` returns a distribution with event shape ``(L,)``.

- :class:`StandardNormal`: :math:`p(z) = \mathcal N(0, I)`.
- :class:`MixtureOfGaussians`: :math:`p(z) = \sum_c \pi_c \mathcal N(z; \mu_c, \operatorname{diag}\sigma_c^2)`,
  all learned.
- :class:`VampPrior`: :math:`p(z) = \frac1C \sum_c q(z \mid u_c)` at learned pseudo-inputs
  (Tomczak & Welling 2018, arXiv:1705.07120); with Gaussian components its density is the
  :class:`DiagonalNormalMixture`, two matrix products per batch of z.
- :class:`FlowPrior`: a masked autoregressive flow over :math:`\mathcal N(0, I)`
  (Papamakarios et al. 2017, arXiv:1705.07057).

The registry :data:`PRIORS` maps a command-line name to a constructor that names the options it
takes among ``(latent_dim, encoder, pseudo_inputs, n_components, flows, squash)``
(``pseudo_inputs`` is a function, called only by the VampPrior).
:data:`PSEUDO_INPUTS` names the ways the VampPrior's pseudo-inputs are parameterised.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints

__all__ = [
    "StandardNormal",
    "MixtureOfGaussians",
    "DiagonalNormalMixture",
    "VampPrior",
    "FlowPrior",
    "PRIORS",
    "PRIOR_OPTIONS",
    "PseudoInputs",
    "PSEUDO_INPUTS",
]


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


class DiagonalNormalMixture(dist.TorchDistribution):
    r"""An equal-weight mixture of C diagonal Normals, its density computed by matrix products.

    .. math::

        \log p(z) = \log \frac1C \sum_c \exp\Big(-\tfrac12 \big[z^2 \cdot \pi_c
            - 2 z \cdot (\mu_c \pi_c) + \mu_c^2 \cdot \pi_c\big]
            - \textstyle\sum_d \log s_{cd} - \tfrac L2 \log 2\pi\Big),
        \qquad \pi_c = s_c^{-2}.

    The same density as ``MixtureSameFamily(Categorical, Normal(loc, scale).to_event(1))``, which
    materialises a ``(..., C, L)`` tensor for every batch of z: with C = 500 pseudo-inputs and
    thousands of importance samples that tensor, not the networks, dominates the evaluation.
    Here the quadratic form is expanded into two ``(..., L) @ (L, C)`` products, done in float64
    because the expansion subtracts large terms. The batch shape is virtual: ``loc`` and
    ``scale`` stay ``(C, L)`` whatever plates expand the distribution to.

    Args:
        loc, scale: the components' means and standard deviations, ``(C, L)``.

    Example:
        >>> loc, scale = torch.randn(3, 2), torch.rand(3, 2) + 0.5
        >>> components = dist.Normal(loc, scale).to_event(1)
        >>> reference = dist.MixtureSameFamily(dist.Categorical(logits=torch.zeros(3)), components)
        >>> z = torch.randn(4, 2)
        >>> torch.allclose(DiagonalNormalMixture(loc, scale).log_prob(z), reference.log_prob(z), atol=1e-5)
        True
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, batch_shape=torch.Size(), validate_args=None):
        self.loc, self.scale = loc, scale  # (C, L)
        super().__init__(torch.Size(batch_shape), loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return DiagonalNormalMixture(self.loc, self.scale, batch_shape, validate_args=self._validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        z = value.double()  # (..., L)
        precision = self.scale.double().pow(-2)  # (C, L)
        mu = self.loc.double()
        quadratic = z.square() @ precision.T - 2.0 * (z @ (mu * precision).T) + (mu.square() * precision).sum(-1)
        log_norm = self.scale.double().log().sum(-1) + 0.5 * self.loc.shape[-1] * math.log(2 * math.pi)  # (C,)
        components = -0.5 * quadratic - log_norm  # (..., C)
        log_mix = torch.logsumexp(components, dim=-1) - math.log(self.loc.shape[0])
        return log_mix.to(value.dtype).expand(torch.broadcast_shapes(value.shape[:-1], self.batch_shape))

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            c = torch.randint(self.loc.shape[0], shape, device=self.loc.device)
            eps = torch.randn(shape + self.event_shape, dtype=self.loc.dtype, device=self.loc.device)
            return self.loc[c] + self.scale[c] * eps

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.mean(0).expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> torch.Tensor:
        second = (self.scale.square() + self.loc.square()).mean(0)
        return (second - self.loc.mean(0).square()).expand(self.batch_shape + self.event_shape)


class VampPrior(nn.Module):
    r"""The variational mixture of posteriors: an equal-weight mixture of ``q(z | u_c)``.

    .. math::

        p(z) = \frac1C \sum_{c=1}^C q(z \mid u_c), \qquad
        u_c = \operatorname{hardtanh}_{[0, 1]}(w_c) \text{ (squash) or } u_c = w_c,

    with the pseudo-inputs :math:`w_c` learned. The paper writes them as
    ``hardtanh(Linear(C -> D)(I_C))``: the rows of the linear map's weight, which is what
    ``squash=True`` learns directly (no product with an identity matrix).

    This prior shares the guide's encoder by design: ``encoder.base(u)`` must return a
    distribution with batch shape ``(C,)`` (for flow guides this is the flow's base
    ``q0(z | u)``, whose density is available in closed form). Diagonal Gaussian components give
    a :class:`DiagonalNormalMixture`; other families a ``MixtureSameFamily``.

    References:
        Tomczak & Welling 2018, "VAE with a VampPrior", AISTATS, arXiv:1705.07120.

    Under ``pyro.infer.SVI`` the encoder's parameters are registered by the model
    (``model$$$prior.encoder.…``) and by the guide (``guide$$$encoder.…``): two names for each
    tensor, as in ``state_dict()``. SVI collects the tensors it steps as a set and ``pyro.optim``
    keeps one optimizer per tensor, so each is stepped once, with the gradient of both uses.

    Args:
        encoder: the guide's encoder (a module with a ``base(x)`` method).
        pseudo_inputs: initial pseudo-inputs ``(C, D)`` (before the hardtanh when ``squash``), learned.
        squash: pass the pseudo-inputs through hardtanh to [0, 1], the paper's parameterisation.
    """

    def __init__(self, encoder: nn.Module, pseudo_inputs: torch.Tensor, squash: bool = False):
        super().__init__()
        self.encoder = encoder
        self.pseudo_inputs = nn.Parameter(pseudo_inputs.clone())
        self.squash = squash

    def inputs(self) -> torch.Tensor:
        """The pseudo-inputs :math:`u_c` the encoder sees: ``(C, D)``."""
        return F.hardtanh(self.pseudo_inputs, 0.0, 1.0) if self.squash else self.pseudo_inputs

    def forward(self) -> dist.Distribution:
        components = self.encoder.base(self.inputs())  # batch (C,), event (L,)
        base = getattr(components, "base_dist", None)
        if isinstance(base, torch.distributions.Normal) and components.reinterpreted_batch_ndims == 1:
            return DiagonalNormalMixture(base.loc, base.scale)
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
    "standard": StandardNormal,
    "mog": MixtureOfGaussians,
    "vamp": lambda encoder, pseudo_inputs, squash=False: VampPrior(encoder, pseudo_inputs(), squash),
    "flow": lambda latent_dim, flows: FlowPrior(latent_dim, max(flows, 1)),
}
"""Name on the command line -> constructor of a prior.

Each constructor names the options it takes among :data:`PRIOR_OPTIONS` (the caller passes it
those), so a misspelt keyword is a ``TypeError``, never silently dropped. ``pseudo_inputs`` is a
function returning initial pseudo-inputs ``(C, D)``; only priors that need them call it (it
draws from the RNG)."""

PRIOR_OPTIONS = ("latent_dim", "encoder", "pseudo_inputs", "n_components", "flows", "squash")


@dataclass(frozen=True)
class PseudoInputs:
    """How the VampPrior's pseudo-inputs start and what they pass through.

    Attributes:
        from_data: start at training rows drawn at random (else at N(mean, std²), elementwise).
        squash: pass them through hardtanh to [0, 1].
    """

    from_data: bool
    squash: bool


PSEUDO_INPUTS: dict[str, PseudoInputs] = {
    "data": PseudoInputs(from_data=True, squash=False),
    # the paper's: hardtanh(W) with W ~ N(mean, std²); its code starts MNIST at N(0.05, 0.01²), Caltech at N(0.8, 0.01²)
    "hardtanh": PseudoInputs(from_data=False, squash=True),
}
"""Name on the command line -> how the VampPrior's pseudo-inputs are parameterised."""
