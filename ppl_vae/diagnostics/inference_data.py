"""ArviZ ``InferenceData`` for a trained program, from traces alone.

Groups: ``posterior`` (every latent site, dims ``obs`` × its own coordinate dims, draws from
q(z|x)), ``posterior_predictive`` (every observed site), ``log_likelihood`` (pointwise
log p(x_i|z) per observed site), ``observed_data``, ``prior`` and ``prior_predictive`` (draws
from p(z) p(x|z)). The data site (the observed site holding x) has dims ``obs`` × ``pixel``;
other observed sites ``obs`` × ``<site>_dim``. One chain; "draws" are independent guide or
prior draws, not MCMC. The program's inputs (labels) reach the guide and the model.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import torch

from ..inference.predictive import posterior_predictive, simulate

__all__ = ["to_inference_data"]


def _site_dims(name: str, event_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    names = [f"{name}_dim"] if len(event_shape) == 1 else [f"{name}_dim_{i}" for i in range(len(event_shape))]
    return {d: np.arange(n) for d, n in zip(names, event_shape)}


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@torch.no_grad()
def to_inference_data(model, guide, x: torch.Tensor, draws: int = 20, **inputs) -> az.InferenceData:
    """Posterior draws for the rows of ``x`` ``(N, D)`` and prior draws, as one ``InferenceData``."""
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
        log_likelihood=log_lik,
        observed_data=observed,
        coords=coords,
        dims=dims,
    )
    idata.extend(
        az.from_dict(
            prior=prior,
            prior_predictive=prior_observed,
            coords={k: v for k, v in coords.items() if k != "obs"},
            dims=prior_dims,
        )
    )
    return idata
