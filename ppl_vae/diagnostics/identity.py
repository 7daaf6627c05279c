"""Does a z sampled from q(z|x) keep the identity of x?

A classifier trained once on the real training images labels decodings; identity
preservation is the probability that the decoding of z ~ q(z|x) gets the label of x. Two
references frame it: z ~ p(z) (chance: the decoding of a random code) and z = E_q[z] (the
posterior mean, what a deterministic autoencoder would decode). Intervals are 95% normal
intervals over test points, each point's rate averaged over its draws.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyro.poutine as poutine
import torch

from ..inference.importance import latent_sites, max_plate_nesting, replayed_traces
from ..inference.params import local_params
from ..inference.predictive import data_site, prior_decode
from .statistics import interval95

__all__ = ["train_classifier", "identity_preservation"]


def train_classifier(x: torch.Tensor, labels: np.ndarray, seed: int = 0):
    """A multinomial logistic regression on the real training images (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny budgets
        return LogisticRegression(max_iter=500, random_state=seed).fit(x.cpu().numpy(), labels)


def _predict(classifier, images: torch.Tensor) -> np.ndarray:
    return classifier.predict(images.clamp(0, 1).reshape(-1, images.shape[-1]).cpu().numpy()).reshape(images.shape[:-1])


@torch.no_grad()
def identity_preservation(
    model, guide, x: torch.Tensor, labels: np.ndarray, classifier, draws: int = 10, mean_draws: int = 32
) -> dict:
    """Identity preservation of posterior draws, the posterior mean and prior draws, with 95% intervals.

    One replay of ``mean_draws`` guide draws gives both the decodings of the first ``draws``
    (the sampled-z rate) and the Monte Carlo posterior mean E_q[z] of every latent site.
    """
    labels = np.asarray(labels)
    k = max(draws, mean_draws)
    guide_trace, model_trace = replayed_traces(model, guide, x, k, max_plate_nesting(model, guide, x))
    decodings = data_site(model_trace, x)["fn"].mean.expand((k,) + x.shape)[:draws]  # (S, N, D)
    posterior = _predict(classifier, decodings) == labels[None, :]  # (S, N)
    means = {s["name"]: s["value"].mean(0) for s in latent_sites(guide_trace)}  # E_q[z] per site
    at_mean = _predict(classifier, _decode_at(model, x, means)) == labels
    prior = _predict(
        classifier, prior_decode(model, draws * len(x), x.shape[1], x.device, x.dtype).reshape(draws, len(x), -1)
    )
    return {
        "posterior_sample": interval95(posterior.mean(0)),
        "posterior_mean": interval95(at_mean.astype(float)),
        "prior_sample": interval95((prior == labels[None, :]).mean(0)),
        "real_images": interval95((_predict(classifier, x) == labels).astype(float)),
    }


def _decode_at(model, x: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """E[x | z = values]: the model run with its latent sites conditioned."""
    trace = poutine.trace(poutine.condition(local_params(model), values)).get_trace(x)
    return data_site(trace, x)["fn"].mean
