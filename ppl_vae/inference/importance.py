r"""The one estimator everything is built on: per-datapoint importance log-weights.

.. math::

    \log w_{ki} = \underbrace{\log p(x_i \mid z_{ki})}_{\text{observed sites}}
                + \underbrace{\log p(z_{ki}) - \log q(z_{ki} \mid x_i)}_{\text{latent sites}},
    \qquad z_{ki} \sim q(z \mid x_i),\; k = 1..K

computed for any model/guide pair through Pyro's effect handlers: the guide is traced
under a vectorized particle plate, the model is replayed against it, and every site's
log-density is summed over everything but the particle and data-plate dimensions. Programs
run with their module parameters answered locally
(:func:`~ppl_vae.inference.params.local_params`), so the global param store is left alone. The
ELBO is the mean of :math:`\log w`, the IWAE bound is :math:`\log \frac1K \sum_k w_k`
(Burda et al. 2016, arXiv:1509.00519), PSIS smooths the same weights.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from ..contracts import DATA_PLATE
from .params import local_params

__all__ = [
    "LogWeights",
    "log_weights",
    "max_plate_nesting",
    "log_mean_exp",
    "replayed_traces",
    "trace_pair",
    "rng_untouched",
    "vectorize",
    "latent_sites",
    "sample_sites",
    "DATA_PLATE",
]


class LogWeights(NamedTuple):
    """Per-particle, per-datapoint terms, each ``(K, B)``."""

    log_lik: torch.Tensor  # Σ over observed sites of log p(x | z)
    log_ratio: torch.Tensor  # Σ over latent sites of log p(z) - log q(z | x)

    @property
    def total(self) -> torch.Tensor:
        return self.log_lik + self.log_ratio


def log_mean_exp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """:math:`\\log \\frac1K \\sum_k e^{x_k}` along ``dim``, stably."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def sample_sites(trace) -> list[dict]:
    """The sample sites of a trace (subsample sites of plates left out), in program order."""
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


def latent_sites(trace) -> list[dict]:
    """The unobserved sample sites of a trace, in program order."""
    return [s for s in sample_sites(trace) if not s["is_observed"]]


def trace_pair(model: Callable, guide: Callable, *args):
    """Trace the guide, then the model replayed against it: ``(guide_trace, model_trace)``."""
    guide_trace = poutine.trace(local_params(guide)).get_trace(*args)
    return guide_trace, poutine.trace(poutine.replay(local_params(model), trace=guide_trace)).get_trace(*args)


@contextlib.contextmanager
def rng_untouched(x: torch.Tensor):
    """Run a block without gradients and without advancing the RNG of ``x``'s device.

    Set-up work (finding the plate nesting, checking an objective) must not draw, so that a
    resumed run draws exactly what the interrupted one would have.
    """
    with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        yield


def max_plate_nesting(model: Callable, guide: Callable, x: torch.Tensor) -> int:
    """How many plate dimensions the pair uses (traces guide and model once, RNG state untouched)."""
    with rng_untouched(x):
        guide_trace, model_trace = trace_pair(model, guide, x)
    dims = [
        -f.dim
        for tr in (guide_trace, model_trace)
        for s in sample_sites(tr)
        for f in s["cond_indep_stack"]
        if f.vectorized
    ]
    return max(dims, default=0)


def vectorize(fn: Callable, num_particles: int, nesting: int) -> Callable:
    """Run ``fn`` inside a particle plate left of the program's own ``nesting`` plate dims."""

    def run(*args):
        with pyro.plate("_particles", num_particles, dim=-(nesting + 1)):
            return fn(*args)

    return run


def replayed_traces(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int, nesting: int):
    """Trace the guide under a particle plate, then the model replayed against it."""
    return trace_pair(vectorize(model, num_particles, nesting), vectorize(guide, num_particles, nesting), x)


def _per_datapoint(site, full_rank: int, K: int, B: int, plate: str) -> torch.Tensor:
    """Sum a site's log-density over all batch dims but (particle, data): ``(K, B)``."""
    frames = [f for f in site["cond_indep_stack"] if f.name == plate]
    if not frames:
        raise ValueError(
            f"site {site['name']!r} is outside the plate {plate!r}; per-datapoint log-weights need "
            "every sample site inside the data plate"
        )
    lp = site["log_prob"]
    lp = lp.reshape((1,) * (full_rank - lp.dim()) + lp.shape)  # left-pad to (particle, ..., data, ...)
    keep = (0, full_rank + frames[0].dim)
    others = [d for d in range(full_rank) if d not in keep]
    if others:
        lp = lp.sum(others)
    return lp.expand(K, B)


def log_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_particles: int = 1,
    nesting: int | None = None,
    plate: str = DATA_PLATE,
    return_traces: bool = False,
):
    """Importance log-weights of ``num_particles`` draws from ``guide(x)`` under ``model(x)``.

    Args:
        model, guide: Pyro programs ``f(x)`` sharing a plate named ``plate`` over ``x.shape[0]``.
        x: a batch ``(B, D)``.
        num_particles: K, vectorized in one plate left of every plate of the programs.
        nesting: the pair's :func:`max_plate_nesting` (computed when not given).

    Returns:
        :class:`LogWeights` with ``(K, B)`` tensors (with gradients, unless called under no_grad);
        with ``return_traces``, also the guide and model traces they came from.

    Example:
        >>> import pyro.distributions as dist
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0., 1.))
        ...         pyro.sample("x", dist.Normal(z, 1.), obs=x)
        >>> def guide(x):  # the exact posterior N(x/2, 1/2)
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(x / 2, 0.5 ** 0.5))
        >>> lw = log_weights(model, guide, torch.tensor([0.0, 1.0]), num_particles=3).total
        >>> torch.allclose(lw, dist.Normal(0., 2 ** 0.5).log_prob(torch.tensor([0.0, 1.0])).expand(3, 2))
        True
    """
    if nesting is None:
        nesting = max_plate_nesting(model, guide, x)
    K, B = num_particles, x.shape[0]
    guide_trace, model_trace = replayed_traces(model, guide, x, K, nesting)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()

    full_rank = nesting + 1
    log_lik = x.new_zeros(K, B)
    log_ratio = x.new_zeros(K, B)
    for site in sample_sites(model_trace):
        term = _per_datapoint(site, full_rank, K, B, plate)
        if site["is_observed"]:
            log_lik = log_lik + term
        else:
            log_ratio = log_ratio + term
    for site in sample_sites(guide_trace):
        log_ratio = log_ratio - _per_datapoint(site, full_rank, K, B, plate)
    weights = LogWeights(log_lik, log_ratio)
    return (weights, guide_trace, model_trace) if return_traces else weights
