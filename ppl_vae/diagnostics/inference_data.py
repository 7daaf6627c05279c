"""ArviZ ``InferenceData`` for a trained program, from traces alone.

Groups: ``posterior`` (every latent site, dims ``obs`` × its own coordinate dims, draws from
q(z|x)), ``posterior_predictive`` (``x``), ``log_likelihood`` (pointwise log p(x_i|z)),
``observed_data``, ``prior`` and ``prior_predictive`` (draws from p(z) p(x|z)). One chain;
"draws" are independent guide or prior draws, not MCMC.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import torch

from ..inference.predictive import posterior_predictive, prior_predictive

__all__ = ["to_inference_data"]


def _site_dims(name: str, event_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    names = [f"{name}_dim"] if len(event_shape) == 1 else [f"{name}_dim_{i}" for i in range(len(event_shape))]
    return {d: np.arange(n) for d, n in zip(names, event_shape)}


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@torch.no_grad()
def to_inference_data(model, guide, x: torch.Tensor, draws: int = 20) -> az.InferenceData:
    """Posterior draws for the rows of ``x`` ``(N, D)`` and prior draws, as one ``InferenceData``."""
    n, data_dim = x.shape
    latents, x_rep, log_lik = posterior_predictive(model, guide, x, draws)  # (S, N, ...)
    prior_latents, prior_x = prior_predictive(model, draws, data_dim, x.device, x.dtype)  # (S, ...)
    coords = {"obs": np.arange(n), "pixel": np.arange(data_dim)}
    dims = {"x": ["obs", "pixel"]}
    prior_dims = {"x": ["pixel"]}
    posterior, prior = {}, {}
    for name, prior_value in prior_latents.items():
        event = tuple(prior_value.shape[1:])
        site_coords = _site_dims(name, event)
        coords.update(site_coords)
        posterior[name] = _numpy(latents[name].reshape((1, draws, n) + event))
        prior[name] = _numpy(prior_value.reshape((1, draws) + event))
        dims[name] = ["obs", *site_coords]
        prior_dims[name] = list(site_coords)
    idata = az.from_dict(
        posterior=posterior,
        posterior_predictive={"x": _numpy(x_rep[None])},
        log_likelihood={"x": _numpy(log_lik[None])},
        observed_data={"x": _numpy(x)},
        coords=coords,
        dims=dims,
    )
    idata.extend(
        az.from_dict(
            prior=prior,
            prior_predictive={"x": _numpy(prior_x[None])},
            coords={k: v for k, v in coords.items() if k != "obs"},
            dims=prior_dims,
        )
    )
    return idata
