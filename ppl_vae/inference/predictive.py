"""Decodings and predictive draws, read off program traces (never off a model's attributes).

The mean of the observed site's distribution in a replayed model trace is the decoding
f(z); for the Normal likelihood it is the x̂ whose squared distance to x is the MSE.
"""

from __future__ import annotations

import pyro.poutine as poutine
import torch

from .importance import latent_sites, max_plate_nesting, replayed_traces
from .params import local_params

__all__ = ["observed_site", "reconstruct", "prior_decode", "prior_predictive", "posterior_predictive"]


def observed_site(trace, conditioned: frozenset | set = frozenset()) -> dict:
    """The (single) observed sample site of a model trace, not counting ``conditioned`` latents."""
    sites = [
        s for s in trace.nodes.values() if s["type"] == "sample" and s["is_observed"] and s["name"] not in conditioned
    ]
    if len(sites) != 1:
        raise ValueError(f"expected one observed site, found {[s['name'] for s in sites]}")
    return sites[0]


@torch.no_grad()
def _replayed(model, guide, x: torch.Tensor, num_particles: int):
    return replayed_traces(model, guide, x, num_particles, max_plate_nesting(model, guide, x))


def reconstruct(model, guide, x: torch.Tensor, num_particles: int = 1) -> torch.Tensor:
    """Decodings E[x | z] of ``num_particles`` draws z ~ q(z | x): ``(K, B, D)``."""
    _, model_trace = _replayed(model, guide, x, num_particles)
    return observed_site(model_trace)["fn"].mean.expand((num_particles,) + x.shape)


@torch.no_grad()
def posterior_predictive(model, guide, x: torch.Tensor, num_particles: int = 1):
    """Draws z ~ q(z|x) (a dict by site), x' ~ p(x | z) ``(K, B, D)`` and log p(x | z) ``(K, B)``."""
    guide_trace, model_trace = _replayed(model, guide, x, num_particles)
    site = observed_site(model_trace)
    shape = (num_particles,) + x.shape
    latents = {s["name"]: s["value"] for s in latent_sites(guide_trace)}
    return latents, site["fn"].sample().expand(shape), site["fn"].log_prob(x).expand(shape[:2])


@torch.no_grad()
def prior_decode(model, n: int, data_dim: int, device="cpu", dtype=None) -> torch.Tensor:
    """Decodings E[x | z] of n draws z ~ p(z): ``(n, D)``."""
    trace = poutine.trace(local_params(model)).get_trace(torch.zeros(n, data_dim, device=device, dtype=dtype))
    return observed_site(trace)["fn"].mean.expand(n, data_dim)


@torch.no_grad()
def prior_predictive(model, n: int, data_dim: int, device="cpu", dtype=None):
    """Draws z ~ p(z) (a dict by site) and x ~ p(x | z) ``(n, D)``, the observation released.

    The model is run on a placeholder batch of zeros (of ``dtype``) only for its shape.
    """
    placeholder = torch.zeros(n, data_dim, device=device, dtype=dtype)
    model = local_params(model)
    name = observed_site(poutine.trace(model).get_trace(placeholder[:1]))["name"]
    trace = poutine.trace(poutine.uncondition(model)).get_trace(placeholder)
    latents = {s["name"]: s["value"] for s in latent_sites(trace) if s["name"] != name}
    return latents, trace.nodes[name]["value"]
