r"""Training objectives: which ELBO, how many particles, and the KL weight β.

All objectives return a differentiable loss ``-ELBO`` summed over the batch and multiplied
by ``scale = N / B``, so a minibatch stands for the whole data set.

- ``trace``: Pyro's :class:`~pyro.infer.Trace_ELBO` (Monte Carlo KL).
- ``meanfield``: :class:`~pyro.infer.TraceMeanField_ELBO` (analytic KL where it exists).
- ``iwae``: :math:`\sum_i \log \frac1K \sum_k w_{ki}` from :func:`~ppl_vae.inference.importance.log_weights`
  — the per-datapoint IWAE bound, the same estimator as ``RenyiELBO(alpha=0)`` with
  vectorized particles, but with the minibatch scale applied outside the log-mean-exp where
  it belongs.

β multiplies the log-densities of every latent site in model and guide,
:math:`\mathcal L_\beta = \mathbb E_q[\log p(x|z)] - \beta\, \mathrm{KL}(q \,\|\, p)`, as a
Pyro handler (:class:`ScaleLatent`); annealing makes β a function of training progress.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch
from pyro.distributions.kl import kl_divergence
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger

from ..errors import UserError
from .importance import latent_sites, log_mean_exp, log_weights, max_plate_nesting, rng_untouched, trace_pair
from .params import local_params

__all__ = ["ScaleLatent", "Objective", "ELBOS"]


class ScaleLatent(Messenger):
    """Multiply the log-density of every unobserved sample site by ``beta``."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.beta


def with_handlers(fn: Callable, scale: float, beta: float | torch.Tensor) -> Callable:
    """``fn`` with its log-densities scaled by ``scale`` and those of its latent sites by ``beta`` too.

    Its module parameters are answered locally (:func:`~ppl_vae.inference.params.local_params`).
    """
    fn = local_params(fn)
    fn = poutine.scale(fn, scale) if scale != 1.0 else fn
    # a tensor β is an input of a recorded step (ppl_vae.inference.compiled): the handler must always be there
    return ScaleLatent(beta)(fn) if isinstance(beta, torch.Tensor) or beta != 1.0 else fn


class Objective:
    """``objective(model, guide, x, scale, beta) -> loss`` for one of the ELBOs in :data:`ELBOS`."""

    def __init__(self, name: str, particles: int = 1):
        if name not in ELBOS:
            raise UserError(f"unknown ELBO {name!r}; choose one of {', '.join(ELBOS)}")
        self.name, self.particles = name, particles
        self._elbo = None
        self._nesting: int | None = None

    def nesting(self, model, guide, x: torch.Tensor) -> int:
        """The pair's plate nesting, found once, without drawing from the RNG.

        A resumed run must draw what the original drew, so finding the nesting cannot draw.
        """
        if self._nesting is None:
            self._nesting = max_plate_nesting(model, guide, x)
            elbo = ELBOS[self.name]
            self._elbo = elbo and elbo(
                num_particles=self.particles, vectorize_particles=self.particles > 1, max_plate_nesting=self._nesting
            )
        return self._nesting

    def __call__(self, model, guide, x: torch.Tensor, scale: float = 1.0, beta: float = 1.0) -> torch.Tensor:
        self.nesting(model, guide, x)
        if self._elbo is None:  # iwae, on the shared log-weights
            lw = log_weights(
                with_handlers(model, 1.0, beta), with_handlers(guide, 1.0, beta), x, self.particles, self._nesting
            )
            return -scale * log_mean_exp(lw.total, dim=0).sum()
        return self._elbo.differentiable_loss(with_handlers(model, scale, beta), with_handlers(guide, scale, beta), x)

    def check(self, model, guide, x: torch.Tensor) -> None:
        """Raise :class:`UserError` if this objective cannot be computed for the pair."""
        x = x[:2]
        with rng_untouched(x):
            if self.name == "meanfield":
                # TraceMeanField_ELBO silently falls back to Monte Carlo; an analytic ELBO was asked for
                missing = _sites_without_closed_form_kl(model, guide, x)
                if missing:
                    raise UserError(
                        f"the meanfield ELBO needs a closed-form KL between guide and prior, which site(s) "
                        f"{', '.join(missing)} do not have; use --elbo trace"
                    )
            loss = self(model, guide, x)
        if not torch.isfinite(loss):
            raise UserError(f"the {self.name!r} ELBO is not finite at initialisation")


def _sites_without_closed_form_kl(model, guide, x: torch.Tensor) -> list[str]:
    guide_trace, model_trace = trace_pair(model, guide, x)
    missing = []
    for site in latent_sites(model_trace):
        try:
            kl_divergence(guide_trace.nodes[site["name"]]["fn"], site["fn"])
        except NotImplementedError:
            missing.append(site["name"])
    return missing


ELBOS = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO, "iwae": None}
"""ELBO name -> Pyro ELBO class (``None``: IWAE on the shared log-weights)."""
