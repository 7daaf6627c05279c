r"""Heads that turn an encoder's hidden state h(x) into a distribution q(z | x).

- :class:`DiagonalNormal`: :math:`q(z|x) = \mathcal N(\mu(h), \operatorname{diag} s(h)^2)`, the scale a
  softplus, or :math:`s = e^{v/2}` with the log-variance :math:`v` clipped by a hardtanh (the
  VampPrior paper's heads, :data:`PAPER_LOG_VAR_RANGE`).
- :class:`LowRankNormal`: :math:`\mathcal N(\mu(h), W(h) W(h)^\top + \operatorname{diag} d(h))`.
- :class:`FlowPosterior`: a base head :math:`q_0(z_0|x)` pushed through N conditional
  transforms :math:`z = T_N(\cdots T_1(z_0; h) \cdots; h)` fed by the same hidden state
  (Kingma et al. 2016, arXiv:1606.04934; Rezende & Mohamed 2015, arXiv:1505.05770).

The registry :data:`FLOWS` maps a guide name to a constructor of one conditional transform
``(latent_dim, context_dim) -> ConditionalTransformModule``; :func:`posterior_head` builds
any head by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DiagonalNormal", "LowRankNormal", "FlowPosterior", "posterior_head"]  # the heads q(z | x)
__all__ += ["FLOWS", "GUIDES", "PAPER_LOG_VAR_RANGE"]  # their registries and the paper's range

MIN_SCALE = 1e-4
PAPER_LOG_VAR_RANGE = (-6.0, 2.0)
"""The log-variance range of the VampPrior paper's Gaussian heads (``Hardtanh(-6, 2)``): s in [0.050, 2.72]."""


class DiagonalNormal(nn.Module):
    r""":math:`q(z|x) = \mathcal N(\mu(h), \operatorname{diag} s(h)^2)` from one linear layer.

    .. math::

        s = \operatorname{softplus}(a(h)) + 10^{-4}
        \quad\text{or, with a log-variance range } [v_0, v_1],\quad
        s = \exp\big(\tfrac12 \operatorname{hardtanh}_{[v_0, v_1]}(a(h))\big).

    Args:
        log_var_range: clip the log-variance to this interval (``None``: the softplus scale).
    """

    def __init__(self, hidden_dim: int, latent_dim: int, log_var_range: tuple[float, float] | None = None):
        super().__init__()
        self.linear = nn.Linear(hidden_dim, 2 * latent_dim)
        self.log_var_range = log_var_range

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        loc, raw_scale = self.linear(h).chunk(2, dim=-1)  # (..., L) each
        if self.log_var_range is None:
            scale = F.softplus(raw_scale) + MIN_SCALE
        else:
            scale = (0.5 * F.hardtanh(raw_scale, *self.log_var_range)).exp()
        return dist.Normal(loc, scale).to_event(1)

    base = forward


class LowRankNormal(nn.Module):
    """:math:`\\mathcal N(\\mu, W W^\\top + \\operatorname{diag} d)` with ``W`` of rank ``rank``."""

    def __init__(self, hidden_dim: int, latent_dim: int, rank: int = 2):
        super().__init__()
        self.latent_dim, self.rank = latent_dim, rank
        self.linear = nn.Linear(hidden_dim, latent_dim * (2 + rank))

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        L, r = self.latent_dim, self.rank
        out = self.linear(h)
        loc, raw_diag, factor = out[..., :L], out[..., L : 2 * L], out[..., 2 * L :]
        cov_factor = factor.reshape(out.shape[:-1] + (L, r)) / r**0.5  # (..., L, r)
        return dist.LowRankMultivariateNormal(loc, cov_factor, F.softplus(raw_diag) + MIN_SCALE)

    base = forward


class FlowPosterior(nn.Module):
    """A base head followed by conditional transforms, all conditioned on ``h``.

    Transforms are Pyro's conditional transform modules, so log-determinants come from
    the library and autoregressive permutations are buffers (saved with the weights).
    """

    def __init__(self, base: nn.Module, transforms: list[nn.Module]):
        super().__init__()
        self.base_head = base
        self.transforms = nn.ModuleList(transforms)

    def base(self, h: torch.Tensor) -> dist.Distribution:
        return self.base_head(h)

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        return dist.TransformedDistribution(self.base_head(h), [t.condition(h) for t in self.transforms])


def _hidden(latent_dim: int, context_dim: int) -> list[int]:
    return [max(2 * latent_dim, 32)]


FLOWS: dict[str, Callable[[int, int], nn.Module]] = {
    "iaf": lambda L, H: T.conditional_affine_autoregressive(L, H, hidden_dims=_hidden(L, H)),
    "naf": lambda L, H: T.conditional_neural_autoregressive(L, H, hidden_dims=_hidden(L, H), width=8),
    "spline": lambda L, H: T.conditional_spline_autoregressive(L, H, hidden_dims=_hidden(L, H), count_bins=8),
    "planar": lambda L, H: T.conditional_planar(L, H, hidden_dims=_hidden(L, H)),
    "radial": lambda L, H: T.conditional_radial(L, H, hidden_dims=_hidden(L, H)),
    "householder": lambda L, H: T.conditional_householder(L, H, hidden_dims=_hidden(L, H)),
}
"""Guide name -> constructor of one conditional transform ``(latent_dim, context_dim)``."""


def _flow_head(make: Callable[[int, int], nn.Module]) -> Callable[..., nn.Module]:
    """A constructor of a diagonal Gaussian base pushed through ``flows`` transforms made by ``make``."""

    def head(hidden_dim: int, latent_dim: int, flows: int = 2, log_var_range: tuple[float, float] | None = None):
        base = DiagonalNormal(hidden_dim, latent_dim, log_var_range)
        return FlowPosterior(base, [make(latent_dim, hidden_dim) for _ in range(flows)])

    return head


GUIDES: dict[str, Callable[..., nn.Module]] = {
    "diagonal": DiagonalNormal,
    "lowrank": LowRankNormal,
    **{name: _flow_head(make) for name, make in FLOWS.items()},
}
"""Guide name -> constructor of a posterior head ``(hidden_dim, latent_dim, ...)``.

Each constructor names the options it takes among ``flows``, ``rank`` and ``log_var_range``
(:func:`posterior_head` passes it those), so a misspelt keyword is a ``TypeError``, never
silently dropped. ``log_var_range`` clips the diagonal Gaussian head (of a flow: its base)."""


def posterior_head(
    name: str,
    hidden_dim: int,
    latent_dim: int,
    flows: int = 2,
    rank: int = 2,
    log_var_range: tuple[float, float] | None = None,
) -> nn.Module:
    """Build the posterior head registered under ``name``."""
    if name not in GUIDES:
        raise ValueError(f"unknown guide {name!r}; choose one of {', '.join(GUIDES)}")
    make = GUIDES[name]
    options = {"flows": flows, "rank": rank, "log_var_range": log_var_range}
    taken = inspect.signature(make).parameters  # each head's own options: the others are not its business
    return make(hidden_dim, latent_dim, **{k: v for k, v in options.items() if k in taken})
