r"""ArviZ ``InferenceData`` for a trained program, from traces alone.

Groups: ``posterior`` (every latent site, dims ``obs`` × its own coordinate dims: independent draws
:math:`z_s \sim q(z|x_i)` of each point's *own* local latent; one chain, not MCMC),
``posterior_predictive`` (every observed site), ``observed_data``, ``prior`` and
``prior_predictive`` (draws from p(z) p(x|z)), and ``conditional_log_likelihood``:
:math:`\log p(x_i \mid z_s)` at those draws, per observed site. The data site (the observed site
holding x) has dims ``obs`` × ``pixel``; other observed sites ``obs`` × ``<site>_dim``. The
program's inputs (labels) reach the guide and the model.

There is deliberately **no** ``log_likelihood`` group. ArviZ reads that group as the pointwise
log-likelihood :math:`\log p(x_i \mid \theta_s)` at posterior draws :math:`\theta_s` of parameters
*shared* by all points, and ``az.loo`` / ``az.waic`` / ``az.compare`` would run on it without
complaint. Here each point has its own latent: leaving :math:`x_i` out sends :math:`z_i` back to
its prior, so the exact leave-one-out predictive of :math:`x_i` is the marginal
:math:`p(x_i) = \int p(x_i|z) p(z) dz`, and PSIS-LOO over the conditional draws estimates it by the
harmonic mean :math:`1/p(x_i) = \mathbb E_{p(z|x_i)}[1/p(x_i|z)]` (Newton & Raftery 1994), whose
variance is infinite as soon as :math:`x_i` says more about :math:`z_i` than the prior does: every
Pareto k̂ above 1, and an elpd far off even when :math:`q` is the exact posterior. Conditional and
marginal likelihoods of latent-variable models answer different questions (Merkle, Furr &
Rabe-Hesketh 2019, arXiv:1802.04452). The held-out elpd, :math:`\sum_i \log p(x_i)` on the test
split by importance sampling, is :func:`ppl_vae.diagnostics.elpd.heldout_elpd` (``Run.heldout_elpd()``),
an ``ELPDData`` for ``az.compare``; on this file ``az.loo`` refuses ("log likelihood not found").

**Global latents.** A site outside the data plate (a Bayesian decoder's weights θ) is one
value for all points: its ``posterior`` variable has the draws θ_s ~ q(θ) and no ``obs``
dimension, and the local draws of draw s are z_s ~ q(z | x_i, θ_s) (joint draws of (θ, z)).
The ``prior`` group holds the local latents only; ``global_sites`` (JSON) names the global ones.

**Names.** Variables are named after the program's sites and the dimensions are the bench's, so
the two are chosen together (:func:`export_names`): a site named like an ArviZ dimension
(``chain``, ``draw``) or holding a slash (netCDF's group separator) gets a variable name of its
own, and a dimension whose name a variable takes (a site named ``obs`` or ``pixel``) is renamed
(``obs_``). The file's attributes say what was chosen: ``point_dim`` (the test points),
``data_variable`` and ``pixel_dim`` (the data site, if any) and ``site_names`` (JSON: variable →
site) — read them rather than assuming ``obs`` and ``pixel``.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import arviz as az
import numpy as np
import torch

from ..inference.predictive import posterior_predictive, simulate

__all__ = ["to_inference_data", "export_names", "data_variable", "point_dim", "CONDITIONAL_GROUP", "ExportNames"]

CONDITIONAL_GROUP = "conditional_log_likelihood"  # a custom group: no ArviZ function reads it
ARVIZ_DIMS = ("chain", "draw")  # ArviZ's own dimensions of every posterior and predictive variable

FILE_ATTRS = {
    "inference_library": "ppl_vae",
    "latent_structure": "amortized: every obs has its own local latent; decoder weights are one point estimate",
    "heldout_elpd": "ppl_vae.load(RUN).heldout_elpd(): arviz ELPDData of held-out IWAE log p(x_i), for az.compare",
    "not_for_loo": "no log_likelihood group on purpose: az.loo/az.waic on per-point latent draws is not an elpd",
}
POSTERIOR_ATTRS = {
    "draws": "independent draws z ~ q(z | x_i) of the amortized guide for each obs; one chain, not MCMC",
}
CONDITIONAL_ATTRS = {
    "quantity": "log p(x_i | z_s) at the posterior group's draws z_s ~ q(z | x_i) of point i's own latent",
    "not_for_loo": "PSIS-LOO over these draws is a harmonic-mean estimate of p(x_i), not an elpd",
    "heldout_elpd": FILE_ATTRS["heldout_elpd"],
}


def _free(name: str, taken: set[str]) -> str:
    """``name``, or ``name_``, ``name__``… : the first not in ``taken`` (which it joins)."""
    while name in taken:
        name += "_"
    taken.add(name)
    return name


class ExportNames(NamedTuple):
    """The variable of every site and the dimensions beside them, none equal to another."""

    variables: dict[str, str]  # site -> variable
    point: str  # the test points' dimension ("obs" unless a variable takes that name)
    pixel: str  # the data site's value dimension ("pixel" unless a variable takes it)
    event: dict[str, list[str]]  # variable -> the dimensions of one draw's value (its event shape)


def export_names(sites: list[str], event_shapes: dict[str, tuple[int, ...]], data: str | None) -> ExportNames:
    """Variable and dimension names for sites ``sites`` (in order) whose values have ``event_shapes``.

    Example:
        >>> names = export_names(["latent", "obs"], {"latent": (4,), "obs": (64,)}, data="obs")
        >>> names.variables, names.point, names.pixel, names.event["latent"]
        ({'latent': 'latent', 'obs': 'obs'}, 'obs_', 'pixel', ['latent_dim'])
        >>> export_names(["draw", "a/b"], {"draw": (2,), "a/b": (3,)}, None).variables
        {'draw': 'draw_', 'a/b': 'a_b'}
    """
    taken = set(ARVIZ_DIMS)
    variables = {}
    for site in sites:
        variables[site] = _free(site.replace("/", "_"), taken)  # a slash separates netCDF groups
    point, pixel = _free("obs", taken), _free("pixel", taken)
    event = {}
    for site in sites:
        variable, shape = variables[site], event_shapes[site]
        if site == data:
            event[variable] = [pixel]
        elif len(shape) == 1:
            event[variable] = [_free(f"{variable}_dim", taken)]
        else:
            event[variable] = [_free(f"{variable}_dim_{i}", taken) for i in range(len(shape))]
    return ExportNames(variables, point, pixel, event)


def point_dim(idata) -> str:
    """The dimension of the test points in an exported ``InferenceData`` (``obs`` unless a site took the name)."""
    return idata.attrs.get("point_dim", "obs")


def data_variable(idata) -> str | None:
    """The variable of the data site (the observed site holding x) in an exported ``InferenceData``, or ``None``."""
    name = idata.attrs.get("data_variable", "")
    return name or None


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@torch.no_grad()
def to_inference_data(model, guide, x: torch.Tensor, draws: int = 20, **inputs) -> az.InferenceData:
    """Posterior draws for the rows of ``x`` ``(N, D)`` and prior draws, as one ``InferenceData``.

    ``inputs`` (labels) reach the guide and the model. Variables are named after the sites
    (:func:`export_names` says how a name that would clash is changed).

    Example:
        >>> idata = to_inference_data(model, guide, x[:10])  # doctest: +SKIP
        >>> az.loo(idata)  # doctest: +SKIP
        TypeError: log likelihood not found in inference data object
    """
    n, data_dim = x.shape
    post = posterior_predictive(model, guide, x, draws, **inputs)  # (S, N, ...)
    prior_inputs = {k: v[:draws] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    sim = simulate(model, draws, data_dim, x.device, x.dtype, like=x, **prior_inputs)  # (S, ...)
    values = {name: value.reshape(n, data_dim) if name == post.data else value for name, value in post.observed.items()}
    latent = [name for name in sim.latents if name in post.latents]
    theta = post.global_latents or {}  # {site: (S, *shape)}: one value for every point
    shapes = {name: tuple(v.shape[1:]) for name, v in values.items()}
    shapes.update({name: tuple(sim.latents[name].shape[1:]) for name in latent})
    shapes.update({name: tuple(v.shape[1:]) for name, v in theta.items()})
    names = export_names([*values, *latent, *theta], shapes, post.data)
    var, point = names.variables, names.point
    coords = {point: np.arange(n)}
    for site, v in var.items():
        sizes = (data_dim,) if site == post.data else shapes[site]
        coords.update({d: np.arange(size) for d, size in zip(names.event[v], sizes)})
    dims, prior_dims = {}, {}
    observed, replicated, log_lik, prior_observed = {}, {}, {}, {}
    for name, value in values.items():
        v = var[name]
        dims[v], prior_dims[v] = [point, *names.event[v]], list(names.event[v])
        observed[v] = _numpy(value)
        replicated[v] = _numpy(post.replicates[name].reshape((1, draws) + value.shape))
        log_lik[v] = _numpy(post.log_lik[name][None])
        if name in sim.observed:
            prior_observed[v] = _numpy(sim.observed[name].reshape((1, draws) + value.shape[1:]))
    posterior, prior = {}, {}
    for name in latent:
        v, event = var[name], shapes[name]
        posterior[v] = _numpy(post.latents[name].reshape((1, draws, n) + event))
        prior[v] = _numpy(sim.latents[name].reshape((1, draws) + event))
        dims[v], prior_dims[v] = [point, *names.event[v]], list(names.event[v])
    for name, value in theta.items():
        v = var[name]
        posterior[v] = _numpy(value.reshape((1, draws) + shapes[name]))
        dims[v] = list(names.event[v])
    idata = az.from_dict(
        posterior=posterior,
        posterior_predictive=replicated,
        observed_data=observed,
        coords=coords,
        dims=dims,
        posterior_attrs=POSTERIOR_ATTRS,
    )
    idata.extend(
        az.from_dict(
            prior=prior,
            prior_predictive=prior_observed,
            coords={k: v for k, v in coords.items() if k != point},
            dims=prior_dims,
        )
    )
    conditional = az.dict_to_dataset(
        log_lik, attrs=CONDITIONAL_ATTRS, coords={point: coords[point]}, dims={name: [point] for name in log_lik}
    )
    idata.add_groups({CONDITIONAL_GROUP: conditional})
    expected = {"posterior": posterior, "posterior_predictive": replicated, "observed_data": observed}
    missing = [group for group, content in expected.items() if content and group not in idata.groups()]
    if missing:  # ArviZ drops a group whose names clash rather than say so: say so here
        raise ValueError(f"the export lost the group(s) {', '.join(missing)}; variables {sorted(var.values())}")
    idata.attrs.update(FILE_ATTRS)
    idata.attrs.update(
        {
            "point_dim": point,
            "data_variable": var[post.data] if post.data else "",
            "pixel_dim": names.pixel if post.data else "",
            "site_names": json.dumps({v: site for site, v in var.items()}),
            "global_sites": json.dumps(list(theta)),
        }
    )
    if theta:
        idata.attrs["latent_structure"] = (
            "amortized: every obs has its own local latent; the global_sites are drawn from q(theta), "
            "one value for all obs"
        )
    return idata
