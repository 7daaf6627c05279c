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
"""

from __future__ import annotations

import arviz as az
import numpy as np
import torch

from ..inference.predictive import posterior_predictive, simulate

__all__ = ["to_inference_data", "CONDITIONAL_GROUP"]

CONDITIONAL_GROUP = "conditional_log_likelihood"  # a custom group: no ArviZ function reads it

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


def _site_dims(name: str, event_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    names = [f"{name}_dim"] if len(event_shape) == 1 else [f"{name}_dim_{i}" for i in range(len(event_shape))]
    return {d: np.arange(n) for d, n in zip(names, event_shape)}


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@torch.no_grad()
def to_inference_data(model, guide, x: torch.Tensor, draws: int = 20, **inputs) -> az.InferenceData:
    """Posterior draws for the rows of ``x`` ``(N, D)`` and prior draws, as one ``InferenceData``.

    ``inputs`` (labels) reach the guide and the model.

    Example:
        >>> idata = to_inference_data(model, guide, x[:10])  # doctest: +SKIP
        >>> az.loo(idata)  # doctest: +SKIP
        TypeError: log likelihood not found in inference data object
    """
    n, data_dim = x.shape
    post = posterior_predictive(model, guide, x, draws, **inputs)  # (S, N, ...)
    prior_inputs = {k: v[:draws] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    sim = simulate(model, draws, data_dim, x.device, x.dtype, like=x, **prior_inputs)  # (S, ...)
    coords = {"obs": np.arange(n), "pixel": np.arange(data_dim)}
    dims, prior_dims = {}, {}
    observed, replicated, log_lik, prior_observed = {}, {}, {}, {}
    for name, value in post.observed.items():
        if name == post.data:
            value, site_coords = value.reshape(n, data_dim), {"pixel": coords["pixel"]}
        else:
            site_coords = _site_dims(name, tuple(value.shape[1:]))
        coords.update(site_coords)
        dims[name], prior_dims[name] = ["obs", *site_coords], list(site_coords)
        observed[name] = _numpy(value)
        replicated[name] = _numpy(post.replicates[name].reshape((1, draws) + value.shape))
        log_lik[name] = _numpy(post.log_lik[name][None])
        if name in sim.observed:
            prior_observed[name] = _numpy(sim.observed[name].reshape((1, draws) + value.shape[1:]))
    posterior, prior = {}, {}
    for name, prior_value in sim.latents.items():
        if name not in post.latents:
            continue
        event = tuple(prior_value.shape[1:])
        site_coords = _site_dims(name, event)
        coords.update(site_coords)
        posterior[name] = _numpy(post.latents[name].reshape((1, draws, n) + event))
        prior[name] = _numpy(prior_value.reshape((1, draws) + event))
        dims[name] = ["obs", *site_coords]
        prior_dims[name] = list(site_coords)
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
            coords={k: v for k, v in coords.items() if k != "obs"},
            dims=prior_dims,
        )
    )
    conditional = az.dict_to_dataset(
        log_lik, attrs=CONDITIONAL_ATTRS, coords={"obs": coords["obs"]}, dims={name: ["obs"] for name in log_lik}
    )
    idata.add_groups({CONDITIONAL_GROUP: conditional})
    idata.attrs.update(FILE_ATTRS)
    return idata
