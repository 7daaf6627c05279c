r"""Training objectives: which ELBO, how many particles, and the KL weight β.

All objectives return a differentiable loss ``-ELBO`` summed over the batch and multiplied
by ``scale = N / B``, so a minibatch stands for the whole data set (for a semi-supervised
run, the scale :mod:`~ppl_vae.inference.trainer` gives a labelled or an unlabelled batch, N/B
when B divides both parts). Only the sites inside
the data plate are scaled (:class:`ScaleLocal`); a global latent θ (a site outside it) counts
once per data set, so the minibatch objective is unbiased for the full-batch ELBO,

.. math::

    \mathbb E_{\text{batch}}\Big[\log\frac{p(\theta)}{q(\theta)}
        + \frac NB \sum_{i \in \text{batch}} \log\frac{p(x_i, z_i \mid \theta)}{q(z_i \mid x_i, \theta)}\Big]
    = \log\frac{p(\theta)}{q(\theta)} + \sum_{i=1}^N \log\frac{p(x_i, z_i \mid \theta)}{q(z_i \mid x_i, \theta)}

(Hoffman et al. 2013, arXiv:1206.7051: stochastic variational inference).

- ``trace``: Pyro's :class:`~pyro.infer.Trace_ELBO` (Monte Carlo KL).
- ``meanfield``: :class:`~pyro.infer.TraceMeanField_ELBO` (analytic KL where it exists).
- ``traceenum``: :class:`~pyro.infer.TraceEnum_ELBO`: discrete sites marked
  ``infer={"enumerate": "parallel"}`` (in the guide, or in the model and absent from the
  guide) are summed out exactly, the rest sampled as by ``trace``.
- ``iwae``: :math:`\sum_i \log \frac1K \sum_k w_{ki}` from :func:`~ppl_vae.inference.importance.log_weights`
  — the per-datapoint IWAE bound, the same estimator as ``RenyiELBO(alpha=0)`` with
  vectorized particles, but with the minibatch scale applied outside the log-mean-exp where
  it belongs. Model-enumerated sites are summed inside every weight. With global latents,
  one :math:`\theta \sim q(\theta)` is shared by the K particles of a step:
  :math:`\log\frac{p(\theta)}{q(\theta)} + \frac NB \sum_i \log \frac1K \sum_k w_{ki}(\theta)`,
  a lower bound of :math:`\log p(x_{1:N})` whatever K.

β multiplies the log-densities of every latent site in model and guide,
:math:`\mathcal L_\beta = \mathbb E_q[\log p(x|z)] - \beta\, \mathrm{KL}(q \,\|\, p)`, as a
Pyro handler (:class:`ScaleLatent`); annealing makes β a function of training progress.

Every objective's gradient must be sound for the program's non-reparameterized sites;
:meth:`Objective.check` refuses, before training, a pairing that would train on a biased or
needlessly noisy gradient (see :func:`unsound_site`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.distributions.kl import kl_divergence
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger

from ..contracts import DATA_PLATE, rows_of
from ..errors import UserError
from .importance import (
    HoldGlobals,
    draw_globals,
    global_names,
    latent_sites,
    log_mean_exp,
    log_weights,
    max_plate_nesting,
    rng_untouched,
    trace_pair,
)
from .params import local_params

__all__ = ["ScaleLatent", "ScaleLocal", "Objective", "ELBOS", "unsound_site"]


class ScaleLocal(Messenger):
    """Multiply the log-density of every sample site inside the data plate by ``scale`` (N/B).

    Sites outside it (global latents θ) keep scale 1: they count once per data set, whatever the
    batch. Without global sites this is ``poutine.scale(scale)``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x):
        ...     theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("x", dist.Normal(theta, 1.0), obs=x)
        >>> tr = pyro.poutine.trace(ScaleLocal(10.0)(model)).get_trace(torch.zeros(3))
        >>> tr.nodes["theta"]["scale"], tr.nodes["x"]["scale"]
        (1.0, 10.0)
    """

    def __init__(self, scale: float | torch.Tensor):
        super().__init__()
        self.scale = scale

    def _process_message(self, msg):
        if any(f.name == DATA_PLATE for f in msg["cond_indep_stack"]):
            msg["scale"] = msg["scale"] * self.scale


class ScaleLatent(Messenger):
    """Multiply the log-density of every unobserved sample site by ``beta``."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.beta


def with_handlers(fn: Callable, scale: float, beta: float | torch.Tensor) -> Callable:
    """``fn`` with its local log-densities scaled by ``scale`` and those of its latent sites by ``beta`` too.

    Its module parameters are answered locally (:func:`~ppl_vae.inference.params.local_params`).
    """
    fn = local_params(fn)
    fn = ScaleLocal(scale)(fn) if isinstance(scale, torch.Tensor) or scale != 1.0 else fn
    # a tensor β is an input of a recorded step (ppl_vae.inference.compiled): the handler must always be there
    return ScaleLatent(beta)(fn) if isinstance(beta, torch.Tensor) or beta != 1.0 else fn


class Objective:
    """``objective(model, guide, x, scale, beta, **inputs) -> loss`` for one of the ELBOs in :data:`ELBOS`."""

    def __init__(self, name: str, particles: int = 1):
        if name not in ELBOS:
            raise UserError(f"unknown ELBO {name!r}; choose one of {', '.join(ELBOS)}")
        self.name, self.particles = name, particles
        self._elbo = None
        self._nesting: int | None = None
        self.globals: list[str] = []  # the guide's global latent sites, found with the nesting

    def nesting(self, model, guide, x: torch.Tensor, **inputs) -> int:
        """The pair's plate nesting, found once, without drawing from the RNG.

        A resumed run must draw what the original drew, so finding the nesting cannot draw.
        """
        if self._nesting is None:
            self._nesting = max_plate_nesting(model, guide, x, **inputs)
            self.globals = global_names(model, guide, x, **inputs)
            elbo = ELBOS[self.name]
            options = {"strict_enumeration_warning": False} if elbo is TraceEnum_ELBO else {}
            self._elbo = elbo and elbo(
                num_particles=self.particles,
                vectorize_particles=self.particles > 1,
                max_plate_nesting=self._nesting,
                **options,
            )
        return self._nesting

    def __call__(self, model, guide, x: torch.Tensor, scale: float = 1.0, beta: float = 1.0, **inputs) -> torch.Tensor:
        self.nesting(model, guide, x, **inputs)
        if self._elbo is None:  # iwae, on the shared log-weights
            model, guide = with_handlers(model, 1.0, beta), with_handlers(guide, 1.0, beta)
            if self.globals:  # one θ ~ q(θ) shared by the K particles, its gradient through the draw
                first = rows_of(inputs, slice(0, 1))
                theta = draw_globals(guide, x[:1], 1, self._nesting, **first).draw(0, self.particles)
                model, guide = HoldGlobals(theta)(model), HoldGlobals(theta)(guide)
            lw = log_weights(model, guide, x, self.particles, self._nesting, **inputs)
            return -(scale * log_mean_exp(lw.total, dim=0).sum() + lw.log_global.mean())
        return self._elbo.differentiable_loss(
            with_handlers(model, scale, beta), with_handlers(guide, scale, beta), x, **inputs
        )

    def check(self, model, guide, x: torch.Tensor, **inputs) -> None:
        """Raise :class:`UserError` if this objective cannot be computed for the pair, or has no sound gradient."""
        x = x[:2]
        inputs = rows_of(inputs, slice(0, 2))
        with rng_untouched(x):
            guide_trace, model_trace = trace_pair(model, guide, x, **inputs)
            reason = unsound_site(self.name, guide_trace, model_trace)
            if reason:
                raise UserError(reason)
            if self.name == "meanfield":
                # TraceMeanField_ELBO silently falls back to Monte Carlo; an analytic ELBO was asked for
                missing = _sites_without_closed_form_kl(guide_trace, model_trace)
                if missing:
                    raise UserError(
                        f"the meanfield ELBO needs a closed-form KL between guide and prior, which site(s) "
                        f"{', '.join(missing)} do not have; use --elbo trace"
                    )
            with torch.enable_grad():  # TraceEnum_ELBO refuses a loss that cannot be differentiated
                loss = self(model, guide, x, **inputs).detach()
        if not torch.isfinite(loss):
            raise UserError(f"the {self.name!r} ELBO is not finite at initialisation")


def unsound_site(elbo: str, guide_trace, model_trace) -> str | None:
    """Why ``elbo`` has no sound gradient for a site of the pair (one line), or ``None``.

    - A discrete guide site that could be enumerated but is not would be trained on
      score-function noise (``trace``, ``traceenum``) or on no gradient at all (``iwae``):
      mark it for enumeration and use ``traceenum``.
    - A guide site marked for enumeration is sampled by ``trace`` and ``meanfield``; ``iwae``
      sums it out inside every weight, where q(y|x) cancels and gets no gradient.
    - A non-reparameterized site without finite support has only the score-function
      estimator, which ``iwae`` and ``meanfield`` do not compute.
    - A model site marked for enumeration (absent from the guide) is summed out by
      ``traceenum`` and ``iwae`` only.
    """
    for site in latent_sites(guide_trace):
        name, fn, how = site["name"], site["fn"], site["infer"].get("enumerate")
        if how == "sequential" or (how == "parallel" and site["infer"].get("num_samples")):
            return (
                f"guide site {name!r}: only exact parallel enumeration is supported; "
                "use infer={'enumerate': 'parallel'}"
            )
        if how == "parallel":
            if not getattr(fn, "has_enumerate_support", False):
                return f"guide site {name!r} is marked for enumeration but {type(fn).__name__} has no finite support"
            if elbo in ("trace", "meanfield"):
                return (
                    f"guide site {name!r} is marked for enumeration, which the {elbo} ELBO ignores (it would sample "
                    "it, with score-function noise); use --elbo traceenum"
                )
            if elbo == "iwae":
                return (
                    f"--elbo iwae sums the enumerated guide site {name!r} out inside every weight, where q({name}|x) "
                    "cancels and gets no gradient; use --elbo traceenum"
                )
        elif not fn.has_rsample:
            if getattr(fn, "has_enumerate_support", False):
                return (
                    f"guide site {name!r} is discrete and not enumerated: the {elbo} ELBO would train it on "
                    f"{'no gradient' if elbo == 'iwae' else 'score-function noise'}; mark it "
                    "infer={'enumerate': 'parallel'} and use --elbo traceenum"
                )
            if elbo in ("iwae", "meanfield"):
                return (
                    f"guide site {name!r} ({type(fn).__name__}) has no reparameterized sampler and the {elbo} ELBO "
                    "computes no score-function term; use --elbo trace"
                )
    for site in latent_sites(model_trace):
        if site["name"] not in guide_trace.nodes and site["infer"].get("enumerate") == "parallel":
            if elbo in ("trace", "meanfield"):
                return (
                    f"model site {site['name']!r} is marked for enumeration, which the {elbo} ELBO cannot sum out; "
                    "use --elbo traceenum or iwae"
                )
    return None


def _sites_without_closed_form_kl(guide_trace, model_trace) -> list[str]:
    missing = []
    for site in latent_sites(model_trace):
        try:
            kl_divergence(guide_trace.nodes[site["name"]]["fn"], site["fn"])
        except (NotImplementedError, KeyError):
            missing.append(site["name"])
    return missing


ELBOS = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO, "traceenum": TraceEnum_ELBO, "iwae": None}
"""ELBO name -> Pyro ELBO class (``None``: IWAE on the shared log-weights)."""
