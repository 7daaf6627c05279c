r"""Inference gaps (Cremer, Li & Duvenaud 2018, arXiv:1801.03558).

.. math::

    \log p(x) - \mathcal L[q_\phi]
      = \underbrace{\log p(x) - \mathcal L[q^*]}_{\text{approximation gap}}
      + \underbrace{\mathcal L[q^*] - \mathcal L[q_\phi]}_{\text{amortization gap}}

:math:`q^*` is a per-datapoint (non-amortized) mean-field Normal for every latent site,
started at the moments of the amortized guide's draws and optimised with the model frozen.
For the diagonal guide this is the same family, so the split is Cremer et al.'s; for richer
guides :math:`q^*` is a diagonal Normal and the "amortization gap" also contains the family
difference (it can then be negative).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..inference.importance import DATA_PLATE, latent_sites, log_weights, max_plate_nesting, replayed_traces

__all__ = ["LocalGuide", "refine_local_guide"]


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


class LocalGuide(nn.Module):
    """One free mean-field Normal per datapoint and latent site: q(z_i) = N(m_i, diag s_i²)."""

    def __init__(self, moments: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.names = list(moments)
        self.event_dims = {name: loc.dim() - 1 for name, (loc, _) in moments.items()}
        self.loc = nn.ParameterDict({n: nn.Parameter(loc.clone()) for n, (loc, _) in moments.items()})
        self.raw_scale = nn.ParameterDict(
            {n: nn.Parameter(_inverse_softplus(scale.clamp(min=1e-4))) for n, (_, scale) in moments.items()}
        )

    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate(DATA_PLATE, x.shape[0]):
            for name in self.names:
                q = dist.Normal(self.loc[name], F.softplus(self.raw_scale[name]) + 1e-5)
                pyro.sample(name, q.to_event(self.event_dims[name]))


@torch.no_grad()
def _moments(model, guide, x: torch.Tensor, particles: int = 64) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    nesting = max_plate_nesting(model, guide, x)
    guide_trace, _ = replayed_traces(model, guide, x, particles, nesting)
    out = {}
    for site in latent_sites(guide_trace):
        v = site["value"].reshape((particles, x.shape[0]) + site["value"].shape[nesting + 1 :])  # (K, B, *event)
        out[site["name"]] = (v.mean(0), v.std(0))
    return out


def refine_local_guide(
    model, guide, x: torch.Tensor, steps: int = 300, lr: float = 0.02, particles: int = 8, progress: bool = False
) -> LocalGuide:
    """Fit a :class:`LocalGuide` to ``x`` by maximising the ELBO with the model's parameters frozen."""
    local = LocalGuide(_moments(model, guide, x)).to(x.device)
    optimizer = torch.optim.Adam(local.parameters(), lr=lr)
    nesting = max_plate_nesting(model, local.guide, x)
    for _ in tqdm(range(steps), desc="refining local guides", disable=not progress, leave=False):
        loss = -log_weights(model, local.guide, x, particles, nesting).total.mean(0).sum()
        optimizer.zero_grad(set_to_none=True)
        # only the local parameters are asked for gradients: the model stays as trained
        grads = torch.autograd.grad(loss, list(local.parameters()))
        for p, g in zip(local.parameters(), grads):
            p.grad = g
        optimizer.step()
    return local
