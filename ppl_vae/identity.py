"""Does a z sampled from q(z|x) keep the identity of x?

A classifier trained once on the real training images labels decodings; identity
preservation is the probability that the decoding of z ~ q(z|x) gets the label of x. Two
references frame it: z ~ p(z) (chance: the decoding of a random code) and z = E_q[z] (the
posterior mean, what a deterministic autoencoder would decode). Intervals are 95% normal
intervals over test points, each point's rate averaged over its draws.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyro.poutine as poutine
import torch

from .evaluate import importance_sample
from .importance import latent_sites
from .predictive import observed_site, prior_decode, reconstruct

__all__ = ["train_classifier", "identity_preservation"]


def train_classifier(x: torch.Tensor, labels: np.ndarray, seed: int = 0):
    """A multinomial logistic regression on the real training images (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny budgets
        return LogisticRegression(max_iter=500, random_state=seed).fit(x.cpu().numpy(), labels)


def _rate(hits: np.ndarray) -> dict:
    """Mean of per-point hit rates ``(N,)`` with a 95% interval."""
    mean = float(hits.mean())
    half = 1.96 * float(hits.std(ddof=1)) / math.sqrt(len(hits)) if len(hits) > 1 else 0.0
    return {"mean": mean, "low": max(0.0, mean - half), "high": min(1.0, mean + half)}


def _predict(classifier, images: torch.Tensor) -> np.ndarray:
    return classifier.predict(images.clamp(0, 1).reshape(-1, images.shape[-1]).cpu().numpy()).reshape(images.shape[:-1])


@torch.no_grad()
def identity_preservation(model, guide, x: torch.Tensor, labels: np.ndarray, classifier, draws: int = 10) -> dict:
    """Identity preservation of posterior draws, the posterior mean and prior draws, with 95% intervals."""
    labels = np.asarray(labels)
    posterior = _predict(classifier, reconstruct(model, guide, x, draws)) == labels[None, :]  # (S, N)
    est = importance_sample(model, guide, x, k=max(draws, 32))
    mean_decoding = _decode_at(model, guide, x, est.latent_mean.to(x.dtype))
    at_mean = _predict(classifier, mean_decoding) == labels
    prior = _predict(classifier, prior_decode(model, draws * len(x), x.shape[1], x.device, x.dtype).reshape(draws, len(x), -1))
    return {
        "posterior_sample": _rate(posterior.mean(0)),
        "posterior_mean": _rate(at_mean.astype(float)),
        "prior_sample": _rate((prior == labels[None, :]).mean(0)),
        "real_images": _rate((_predict(classifier, x) == labels).astype(float)),
    }


def _decode_at(model, guide, x: torch.Tensor, latent_mean: torch.Tensor) -> torch.Tensor:
    """E[x | z = E_q[z]]: the model run with every latent site conditioned at its posterior mean."""
    guide_trace = poutine.trace(guide).get_trace(x)
    values, start = {}, 0
    for site in latent_sites(guide_trace):
        width = site["value"][0].numel()
        values[site["name"]] = latent_mean[:, start : start + width].reshape(site["value"].shape)
        start += width
    trace = poutine.trace(poutine.condition(model, values)).get_trace(x)
    return observed_site(trace, set(values))["fn"].mean
