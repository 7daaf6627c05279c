r"""Inference gaps (Cremer, Li & Duvenaud 2018, arXiv:1801.03558).

.. math::

    \log p(x) - \mathcal L[q_\phi]
      = \underbrace{\log p(x) - \mathcal L[q^*]}_{\text{approximation gap}}
      + \underbrace{\mathcal L[q^*] - \mathcal L[q_\phi]}_{\text{amortization gap}}

:math:`q^*` is a per-datapoint (non-amortized) mean-field distribution, optimised with the
model frozen: a Normal for every continuous latent site, started at the moments of the
amortized guide's draws, and — for a discrete site the guide enumerates (Categorical,
OneHotCategorical, Bernoulli) — free logits per datapoint, started at the guide's average
probabilities and summed out exactly like the amortized guide's. For the diagonal guide this
is the same family, so the split is Cremer et al.'s; for richer guides (flows, or a q(z|x, y)
that depends on the discrete value) the "amortization gap" also contains the family
difference (it can then be negative). :attr:`LocalGuide.notes` says what was done with each
site, and :func:`refine_local_guide` returns ``None`` for a discrete site it cannot refine
(sampled, not enumerated, or of another family): the gaps are then not computed.

Only the local latents are refined: a program's global latents θ are held at a draw
θ ~ q(θ) (:class:`~ppl_vae.inference.importance.HoldGlobals`) by the caller, so the gaps are
those of the local guide q(z | x, θ).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..inference.importance import DATA_PLATE, local_latent_sites, log_weights, max_plate_nesting, replayed_traces

__all__ = ["LocalGuide", "refine_local_guide", "REFINABLE"]

REFINABLE = (dist.Categorical, dist.OneHotCategorical, dist.Bernoulli)
"""Discrete families whose enumerated sites get free per-datapoint logits."""


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


class LocalGuide(nn.Module):
    """One free mean-field distribution per datapoint and latent site, in the amortized guide's site order.

    ``moments`` maps a continuous site to ``(loc, scale)`` ``(B, *event)``; ``logits`` maps a
    discrete site to ``(family, logits)`` ``(B, ...)``.
    """

    def __init__(
        self,
        order: list[str],
        moments: dict[str, tuple[torch.Tensor, torch.Tensor]],
        logits: dict[str, tuple[type, torch.Tensor]] | None = None,
    ):
        super().__init__()
        logits = logits or {}
        self.names = list(order)
        # parameters are keyed by the site's place, not its name: a site name may hold a dot
        key = {name: f"site{i}" for i, name in enumerate(self.names)}
        self.keys = key
        self.event_dims = {name: loc.dim() - 1 for name, (loc, _) in moments.items()}
        self.loc = nn.ParameterDict({key[n]: nn.Parameter(loc.clone()) for n, (loc, _) in moments.items()})
        self.raw_scale = nn.ParameterDict(
            {key[n]: nn.Parameter(_inverse_softplus(scale.clamp(min=1e-4))) for n, (_, scale) in moments.items()}
        )
        self.families = {n: family for n, (family, _) in logits.items()}
        self.logits = nn.ParameterDict({key[n]: nn.Parameter(value.clone()) for n, (_, value) in logits.items()})
        self.notes = {n: "Normal per datapoint" for n in moments}
        self.notes.update(
            {
                n: f"free {family.__name__} logits per datapoint, summed out exactly"
                for n, family in self.families.items()
            }
        )

    def guide(self, x: torch.Tensor, **inputs) -> None:
        with pyro.plate(DATA_PLATE, x.shape[0]):
            for name in self.names:
                key = self.keys[name]
                if name in self.families:
                    q = self.families[name](logits=self.logits[key])
                    pyro.sample(name, q, infer={"enumerate": "parallel"})
                else:
                    q = dist.Normal(self.loc[key], F.softplus(self.raw_scale[key]) + 1e-5)
                    pyro.sample(name, q.to_event(self.event_dims[name]))


def _logits(family: type, probs: torch.Tensor) -> torch.Tensor:
    if family is dist.Bernoulli:
        return torch.logit(probs.clamp(1e-6, 1 - 1e-6))
    return probs.clamp(min=1e-12).log()


@torch.no_grad()
def _initial(model, guide, x: torch.Tensor, particles: int = 64, **inputs):
    """Site order, Normal moments of continuous sites and average logits of discrete ones, from guide draws."""
    nesting = max_plate_nesting(model, guide, x, **inputs)
    guide_trace, _ = replayed_traces(model, guide, x, particles, nesting, **inputs)
    order, moments, logits = [], {}, {}
    for site in local_latent_sites(guide_trace):  # global latents stay as the programs hold them
        name, fn, value = site["name"], site["fn"], site["value"]
        order.append(name)
        if fn.has_rsample:
            v = value.reshape((particles, x.shape[0]) + value.shape[nesting + 1 :])  # (K, B, *event)
            moments[name] = (v.mean(0), v.std(0))
        elif site["infer"].get("enumerate") == "parallel" and type(fn) in REFINABLE:
            extra = fn.probs.shape[len(fn.batch_shape) :]
            probs = fn.probs.reshape((-1, x.shape[0]) + extra).mean(0)  # (B, ...) averaged over draws upstream
            logits[name] = (type(fn), _logits(type(fn), probs))
        else:
            return None
    return order, moments, logits


def refine_local_guide(
    model,
    guide,
    x: torch.Tensor,
    steps: int = 300,
    lr: float = 0.02,
    particles: int = 8,
    progress: bool = False,
    **inputs,
) -> LocalGuide | None:
    """Fit a :class:`LocalGuide` to ``x`` by maximising the ELBO with the model's parameters frozen.

    ``None`` when a latent site is discrete but neither enumerated nor of a :data:`REFINABLE` family, or
    when the guide has no latent sites (nothing to refine: the ELBO is log p(x)).
    """
    initial = _initial(model, guide, x, **inputs)
    if initial is None or not initial[0]:
        return None
    local = LocalGuide(*initial).to(x.device)
    optimizer = torch.optim.Adam(local.parameters(), lr=lr)
    nesting = max_plate_nesting(model, local.guide, x, **inputs)
    for _ in tqdm(range(steps), desc="refining local guides", disable=not progress, leave=False):
        loss = -log_weights(model, local.guide, x, particles, nesting, **inputs).elbo.mean(0).sum()
        optimizer.zero_grad(set_to_none=True)
        # only the local parameters are asked for gradients: the model stays as trained
        grads = torch.autograd.grad(loss, list(local.parameters()))
        for p, g in zip(local.parameters(), grads):
            p.grad = g
        optimizer.step()
    return local
