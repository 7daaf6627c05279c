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

Discrete sites marked ``infer={"enumerate": "parallel"}`` are summed out exactly, in the
guide (:math:`y \sim q(y \mid x)`, one :math:`z_{k,y} \sim q(z \mid x, y)` per value) and in
the model (sites the guide does not sample):

.. math::

    \log w_{ki} = \log \sum_y \frac{p(x_i, y, z_{k,y})}{q(z_{k,y} \mid x_i, y)},
    \qquad
    \mathrm{ELBO}_{ki} = \sum_y q(y \mid x_i)\,\big[\log p(x_i, y, z_{k,y})
                         - \log q(y \mid x_i) - \log q(z_{k,y} \mid x_i, y)\big],

the first the Rao–Blackwellised importance weight (:math:`q(y|x)` cancels; an unbiased
estimate of :math:`p(x_i)`), the second the per-datapoint value of Pyro's ``TraceEnum_ELBO``
(Kingma et al. 2014, arXiv:1406.5298, eq. 7). Model-enumerated sites are log-sum-exp'd out
inside :math:`\log p`.

Sample sites outside the data plate are **global latents** :math:`\theta` (a prior on decoder
weights, a hyperprior). Each particle draws its own :math:`\theta_k \sim q(\theta)`, the
local terms are conditioned on it, and the global terms are kept apart, once per data set:

.. math::

    \log w_{ki} = \log p(x_i, z_{ki} \mid \theta_k) - \log q(z_{ki} \mid x_i, \theta_k), \qquad
    g_k = \log p(\theta_k) - \log q(\theta_k),

so the ELBO of a data set of N points is :math:`\mathbb E_k[g_k + \sum_i \log w_{ki}]` (Kingma &
Welling 2014, arXiv:1312.6114, appendix F, "full variational Bayes"). :class:`HoldGlobals`
holds :math:`\theta` at given draws (:class:`GlobalDraws`): the held-out estimators average the
local weights over draws shared by all test points.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ..contracts import DATA_PLATE
from .params import local_params

__all__ = [
    "LogWeights",
    "Frame",
    "Traced",
    "log_weights",
    "max_plate_nesting",
    "log_mean_exp",
    "replayed_traces",
    "enumerated_traces",
    "trace_pair",
    "rng_untouched",
    "vectorize",
    "latent_sites",
    "sample_sites",
    "is_enumerated",
    "is_global",
    "local_latent_sites",
    "global_latent_sites",
    "global_names",
    "HoldGlobals",
    "GlobalDraws",
    "draw_globals",
    "DATA_PLATE",
]


class LogWeights(NamedTuple):
    """Per-particle, per-datapoint terms, each ``(K, B)``.

    Without enumerated sites ``total = log_lik + log_ratio``; with them ``total`` sums the
    enumerated values inside the weight and ``log_lik``, ``log_ratio`` are their expectations
    under q (see the module docstring), so ``elbo = log_lik + log_ratio <= total``.
    """

    log_lik: torch.Tensor  # E_q(y) of Σ over observed sites of log p(x | z, y, θ)
    log_ratio: torch.Tensor  # E_q(y) of Σ over local latent sites of log p(z, y | θ) - log q(z, y | x, θ)
    total: torch.Tensor  # log w: the importance log-weight of the local latents, given θ
    log_global: torch.Tensor  # (K,) Σ over global sites of log p(θ) - log q(θ) (zeros without them)

    @property
    def elbo(self) -> torch.Tensor:
        """The per-particle ELBO terms ``(K, B)``: their mean over particles is the Monte Carlo ELBO."""
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


def is_global(site: dict) -> bool:
    """Whether a sample site sits outside the data plate: a global latent θ, counted once per data set."""
    return not any(f.name == DATA_PLATE for f in site["cond_indep_stack"])


def local_latent_sites(trace) -> list[dict]:
    """The latent sites of a trace inside the data plate: each point's own z."""
    return [s for s in latent_sites(trace) if not is_global(s)]


def global_latent_sites(trace) -> list[dict]:
    """The latent sites of a trace outside the data plate and not held at a draw (:class:`HoldGlobals`)."""
    return [s for s in latent_sites(trace) if is_global(s) and not s["infer"].get("_held")]


class HoldGlobals(Messenger):
    """Hold the sites ``values`` names at those values, as ``poutine.replay`` would: still latent, not drawn.

    The held sites keep their log-densities (log p(θ) in the model, log q(θ) in the guide); they
    are marked ``infer["_held"]`` so that the estimators know θ is given, and
    ``poutine.uncondition`` (prior draws) leaves them as they are.
    """

    def __init__(self, values: dict[str, torch.Tensor]):
        super().__init__()
        self.values = values

    def _pyro_sample(self, msg):
        if msg["name"] in self.values and not msg["is_observed"]:
            msg["value"] = self.values[msg["name"]]
            msg["done"] = True
            msg["infer"] = {**msg["infer"], "_held": True}


def is_enumerated(site: dict) -> bool:
    """Whether an enumeration handler summed this site out (its values sit in an enumeration dim)."""
    return site["infer"].get("_enumerate_dim") is not None


def trace_pair(model: Callable, guide: Callable, *args, **inputs):
    """Trace the guide, then the model replayed against it: ``(guide_trace, model_trace)``."""
    guide_trace = poutine.trace(local_params(guide)).get_trace(*args, **inputs)
    model = poutine.replay(local_params(model), trace=guide_trace)
    return guide_trace, poutine.trace(model).get_trace(*args, **inputs)


@contextlib.contextmanager
def rng_untouched(x: torch.Tensor):
    """Run a block without gradients and without advancing the RNG of ``x``'s device.

    Set-up work (finding the plate nesting, checking an objective) must not draw, so that a
    resumed run draws exactly what the interrupted one would have.
    """
    with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        yield


def max_plate_nesting(model: Callable, guide: Callable, x: torch.Tensor, **inputs) -> int:
    """How many plate dimensions the pair uses (traces guide and model once, RNG state untouched)."""
    with rng_untouched(x):
        guide_trace, model_trace = trace_pair(model, guide, x, **inputs)
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

    def run(*args, **kwargs):
        with pyro.plate("_particles", num_particles, dim=-(nesting + 1)):
            return fn(*args, **kwargs)

    return run


def replayed_traces(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int, nesting: int, **inputs):
    """Trace the guide under a particle plate, then the model replayed against it (every site sampled)."""
    return trace_pair(vectorize(model, num_particles, nesting), vectorize(guide, num_particles, nesting), x, **inputs)


def enumerated_traces(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int, nesting: int, **inputs):
    """:func:`replayed_traces` with sites marked ``infer={"enumerate": "parallel"}`` enumerated.

    As in Pyro's ``TraceEnum_ELBO``: the guide's enumeration dims start left of the particle
    plate, the model's own enumerated sites take the dims left of the guide's.
    """
    guide = poutine.enum(vectorize(guide, num_particles, nesting), first_available_dim=-(nesting + 2))
    model = poutine.enum(vectorize(model, num_particles, nesting))  # continues the guide's dim allocation
    return trace_pair(model, guide, x, **inputs)


def global_names(model: Callable, guide: Callable, x: torch.Tensor, **inputs) -> list[str]:
    """The guide's global latent sites (outside the data plate, not held), in program order; draws nothing."""
    with rng_untouched(x):
        guide_trace, _ = trace_pair(model, guide, x, **inputs)
    return [s["name"] for s in global_latent_sites(guide_trace)]


@dataclass(frozen=True)
class GlobalDraws:
    r"""S draws :math:`\theta_s \sim q(\theta)` of the guide's global sites.

    ``values[name]`` holds the S draws in its dimension ``dims[name]`` (where a vectorized pass
    has its particles); ``events[name]`` is the site's event rank.
    """

    values: dict[str, torch.Tensor]
    dims: dict[str, int]
    events: dict[str, int]
    S: int

    def draw(self, s: int, k: int = 1) -> dict[str, torch.Tensor]:
        """θ_s for a pass of ``k`` vectorized particles (every particle holds the same θ_s)."""
        out = {}
        for name, value in self.values.items():
            d = self.dims[name]
            one = value.narrow(d, s, 1)
            out[name] = one.expand(one.shape[:d] + (k,) + one.shape[d + 1 :])
        return out

    def single(self, s: int) -> dict[str, torch.Tensor]:
        """θ_s for a pass without a particle plate (prior draws, simulations)."""
        out = {}
        for name, value in self.values.items():
            one = value.select(self.dims[name], s)
            while one.dim() > self.events[name] and one.shape[0] == 1:  # the particle plate's broadcast dims
                one = one[0]
            out[name] = one
        return out

    def hold(self, fn: Callable, s: int, k: int | None = None) -> Callable:
        """``fn`` with θ held at draw ``s`` (for ``k`` particles; ``None``: no particle plate)."""
        return HoldGlobals(self.single(s) if k is None else self.draw(s, k))(fn)

    def names(self) -> list[str]:
        return list(self.values)


def draw_globals(guide: Callable, x: torch.Tensor, num_draws: int, nesting: int, **inputs) -> GlobalDraws:
    """``num_draws`` draws θ ~ q(θ) of the guide's global sites in one vectorized pass on the rows ``x`` (give few).

    Gradients flow through reparameterized draws unless called under ``no_grad``.
    """
    trace = poutine.trace(local_params(vectorize(guide, num_draws, nesting))).get_trace(x, **inputs)
    values, dims, events = {}, {}, {}
    for site in global_latent_sites(trace):
        value, event = site["value"], site["fn"].event_dim
        d = value.dim() - event - (nesting + 1)  # the particle plate's dim, counted from the left
        if d < 0:  # a value that does not vary over the particles: one draw, repeated
            value, d = value.reshape((1,) * -d + value.shape), 0
        if value.shape[d] != num_draws:
            value = value.expand(value.shape[:d] + (num_draws,) + value.shape[d + 1 :])
        values[site["name"]], dims[site["name"]], events[site["name"]] = value, d, event
    return GlobalDraws(values, dims, events, num_draws)


@dataclass(frozen=True)
class Frame:
    """How a pair's site tensors line up: ``(enumeration dims..., particle, the program's plates...)``.

    ``weights`` are the probabilities of the enumerated values given each draw, ``(E..., K, B)``
    (q(y|x) for guide-enumerated sites times p(y'|x, z, y) for model-enumerated ones), or
    ``None`` when nothing is enumerated.
    """

    nesting: int  # the program's plate dims
    n_enum: int  # enumeration dims left of the particle dim
    K: int
    B: int
    plate: str = DATA_PLATE
    weights: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.n_enum + 1 + self.nesting

    def data_dim(self, site: dict) -> int:
        frames = [f for f in site["cond_indep_stack"] if f.name == self.plate]
        if not frames:
            raise ValueError(
                f"site {site['name']!r} is outside the plate {self.plate!r}; per-datapoint log-weights need "
                "every sample site inside the data plate"
            )
        return frames[0].dim

    def by_datapoint(self, t: torch.Tensor, site: dict, event_dim: int = 0) -> torch.Tensor:
        """``t`` (a site's batch shape, then ``event_dim`` dims) as ``(E..., K, B, F)``; F: the rest, flattened.

        Enumeration, particle and data dims may keep size 1 where ``t`` does not vary along them.
        """
        batch_rank = t.dim() - event_dim
        if batch_rank > self.rank:
            raise ValueError(
                f"site {site['name']!r} has {batch_rank} batch dims where the pair's plates and enumeration allow "
                f"{self.rank}; declare event dims with .to_event(n)"
            )
        t = t.reshape((1,) * (self.rank - batch_rank) + t.shape)  # left-pad to (E..., K, plates...)
        head = self.n_enum + 1  # where the data dim goes: right of the particle dim
        position = self.rank + self.data_dim(site)
        if position != head:
            t = t.movedim(position, head)
        return t.flatten(head + 1) if t.dim() > head + 1 else t.unsqueeze(-1)

    def global_term(self, site: dict) -> torch.Tensor:
        """A global site's log-density summed over all but the particle dim: ``(K,)`` or ``(1,)``."""
        t = site["log_prob"]
        if t.dim() > self.rank:
            raise ValueError(
                f"site {site['name']!r} has {t.dim()} batch dims where the pair's plates and enumeration allow "
                f"{self.rank}; declare event dims with .to_event(n)"
            )
        t = t.reshape((1,) * (self.rank - t.dim()) + t.shape)  # (E..., K, plates...)
        t = t.sum(tuple(range(self.n_enum + 1, self.rank))) if self.rank > self.n_enum + 1 else t
        return t.reshape(t.shape[self.n_enum :])  # a global site depends on no enumerated value

    def term(self, site: dict, t: torch.Tensor | None = None) -> torch.Tensor:
        """A site's log-density (or ``t``, shaped like it) summed over all but (E..., K, B)."""
        t = site["log_prob"] if t is None else t
        t = self.by_datapoint(t, site)
        return t.squeeze(-1) if t.shape[-1] == 1 else t.sum(-1)

    def expect(self, t: torch.Tensor) -> torch.Tensor:
        """Average ``t`` ``(E..., K, B, ...)`` over the enumerated values: ``(K, B, ...)``."""
        if self.weights is None:
            return t
        extra = t.dim() - (self.n_enum + 2)
        w = self.weights.reshape(self.weights.shape + (1,) * extra)
        t = torch.where(w > 0, t, torch.zeros((), dtype=t.dtype, device=t.device))  # 0 · (-inf) is 0 here
        return (w * t).sum(tuple(range(self.n_enum)))


class Traced(NamedTuple):
    """The log-weights with the traces they came from and the :class:`Frame` their tensors live in."""

    weights: LogWeights
    guide_trace: object
    model_trace: object
    frame: Frame


def _frame(guide_trace, model_trace, nesting: int, K: int, B: int, plate: str) -> Frame:
    dims = [
        -s["infer"]["_enumerate_dim"] for tr in (guide_trace, model_trace) for s in sample_sites(tr) if is_enumerated(s)
    ]
    return Frame(nesting, max(dims, default=nesting + 1) - (nesting + 1), K, B, plate)


def _sum(terms: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    total = like.new_zeros(())
    for t in terms:
        total = total + t
    return total


def _enumerated(frame: Frame, guide_trace, model_trace) -> tuple[LogWeights, Frame]:
    """Sum enumerated sites out exactly (module docstring): log-weights and the enumeration weights."""
    R, K, B = frame.rank, frame.K, frame.B
    x_like = next(s for s in sample_sites(model_trace) if not is_global(s))["log_prob"]  # dtype and device
    guide_dims = {R + s["infer"]["_enumerate_dim"] for s in sample_sites(guide_trace) if is_enumerated(s)}
    model_dims = {
        R + s["infer"]["_enumerate_dim"]
        for s in sample_sites(model_trace)
        if is_enumerated(s) and s["name"] not in guide_trace.nodes
    }
    model_sites = [s for s in sample_sites(model_trace) if not is_global(s)]
    observed = _sum([frame.term(s) for s in model_sites if s["is_observed"]], x_like)
    latent = _sum([frame.term(s) for s in model_sites if not s["is_observed"]], x_like)
    log_q = _sum(
        [frame.term(s) for s in sample_sites(guide_trace) if not is_enumerated(s) and not is_global(s)], x_like
    )
    log_q_y = _sum([frame.term(s) for s in sample_sites(guide_trace) if is_enumerated(s)], x_like)
    joint = observed + latent  # (E..., K, B): log p(x, y, z) for every enumerated value
    M, G = tuple(sorted(model_dims)), tuple(sorted(guide_dims))
    log_p = torch.logsumexp(joint, M, keepdim=True) if M else joint  # model-enumerated sites summed out
    log_prior = torch.logsumexp(latent, M, keepdim=True) if M else latent
    total = torch.logsumexp(log_p - log_q, G, keepdim=True) if G else log_p - log_q
    q_y = log_q_y.exp()
    weights = q_y * (joint - log_p).exp()  # joint posterior over every enumerated value, sums to 1
    frame = Frame(frame.nesting, frame.n_enum, K, B, frame.plate, weights.expand(weights.shape[:-2] + (K, B)))
    G_only = Frame(frame.nesting, frame.n_enum, K, B, frame.plate, q_y.expand(q_y.shape[:-2] + (K, B)))

    def flat(t: torch.Tensor) -> torch.Tensor:  # drop the enumeration dims (size 1 by now): (K, B)
        return t.reshape(t.shape[frame.n_enum :]).expand(K, B)

    if G:
        log_lik = G_only.expect(log_p - log_prior).expand(K, B)
        log_ratio = G_only.expect(log_prior - log_q - log_q_y).expand(K, B)
    else:
        log_lik, log_ratio = flat(log_p - log_prior), flat(log_prior - log_q)
    return LogWeights(log_lik, log_ratio, flat(total), _global_terms(frame, guide_trace, model_trace)), frame


def _global_terms(frame: Frame, guide_trace, model_trace) -> torch.Tensor:
    r""":math:`g_k = \log p(\theta_k) - \log q(\theta_k)`, summed over the global sites: ``(K,)``."""
    like = sample_sites(model_trace)[0]["log_prob"]  # dtype and device
    g = like.new_zeros(frame.K)
    for site in sample_sites(model_trace):
        if is_global(site):
            g = g + frame.global_term(site)
    for site in sample_sites(guide_trace):
        if is_global(site):
            g = g - frame.global_term(site)
    return g


def log_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_particles: int = 1,
    nesting: int | None = None,
    plate: str = DATA_PLATE,
    return_traces: bool = False,
    **inputs,
):
    """Importance log-weights of ``num_particles`` draws from ``guide(x, **inputs)`` under ``model(x, **inputs)``.

    Args:
        model, guide: Pyro programs ``f(x, **inputs)`` sharing a plate named ``plate`` over ``x.shape[0]``.
        x: a batch ``(B, D)``.
        num_particles: K, vectorized in one plate left of every plate of the programs.
        nesting: the pair's :func:`max_plate_nesting` (computed when not given).
        inputs: the batch's other inputs (labels ``y``, or ``y=None`` for an unlabelled batch).

    Sites outside the data plate (global latents θ, one draw per particle) go into
    ``log_global`` ``(K,)``; the ``(K, B)`` terms are those of the local sites given θ.

    Returns:
        :class:`LogWeights` with ``(K, B)`` tensors (with gradients, unless called under no_grad);
        with ``return_traces``, a :class:`Traced` with the guide and model traces and their :class:`Frame`.

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
        nesting = max_plate_nesting(model, guide, x, **inputs)
    K, B = num_particles, x.shape[0]
    guide_trace, model_trace = enumerated_traces(model, guide, x, K, nesting, **inputs)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    frame = _frame(guide_trace, model_trace, nesting, K, B, plate)
    if frame.n_enum:
        weights, frame = _enumerated(frame, guide_trace, model_trace)
    else:
        log_lik = x.new_zeros(K, B)
        log_ratio = x.new_zeros(K, B)
        for site in sample_sites(model_trace):
            if is_global(site):
                continue
            term = frame.term(site).expand(K, B)
            if site["is_observed"]:
                log_lik = log_lik + term
            else:
                log_ratio = log_ratio + term
        for site in sample_sites(guide_trace):
            if not is_global(site):
                log_ratio = log_ratio - frame.term(site).expand(K, B)
        weights = LogWeights(log_lik, log_ratio, log_lik + log_ratio, _global_terms(frame, guide_trace, model_trace))
    return Traced(weights, guide_trace, model_trace, frame) if return_traces else weights
