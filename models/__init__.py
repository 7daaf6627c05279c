"""Generative programs p(z) p(x | z) and their parts (installed as ``ppl_vae.models``)."""

from .likelihoods import LIKELIHOODS, IsotropicNormal, Likelihood, LocScale, Logits, check_scale
from .networks import MLP, NETWORKS, ConvDecoder, ConvEncoder
from .priors import PRIORS, FlowPrior, MixtureOfGaussians, StandardNormal, VampPrior
from .vae import VAE

__all__ = [
    "VAE",
    "MLP",
    "ConvDecoder",
    "ConvEncoder",
    "NETWORKS",
    "Likelihood",
    "IsotropicNormal",
    "LocScale",
    "Logits",
    "LIKELIHOODS",
    "check_scale",
    "StandardNormal",
    "MixtureOfGaussians",
    "VampPrior",
    "FlowPrior",
    "PRIORS",
]
