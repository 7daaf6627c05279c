"""Generative programs p(z) p(x | z) and their parts (installed as ``ppl_vae.models``)."""

from .hierarchical import HierarchicalVAE
from .likelihoods import LIKELIHOODS, IsotropicNormal, Likelihood, LocScale, Logits, check_scale
from .networks import INITS, LAYERS, MLP, NETWORKS, ConvDecoder, ConvEncoder, GatedDense, Join, stack
from .priors import (
    PRIORS,
    PSEUDO_INPUTS,
    DiagonalNormalMixture,
    FlowPrior,
    MixtureOfGaussians,
    PseudoInputs,
    StandardNormal,
    VampPrior,
)
from .vae import DECODER_PRIORS, VAE, BayesianLinear, split_output

__all__ = [
    "VAE",
    "BayesianLinear",
    "DECODER_PRIORS",
    "split_output",
    "HierarchicalVAE",
    "MLP",
    "GatedDense",
    "Join",
    "stack",
    "INITS",
    "LAYERS",
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
    "DiagonalNormalMixture",
    "FlowPrior",
    "PRIORS",
    "PseudoInputs",
    "PSEUDO_INPUTS",
]
