"""Inference programs q(z | x) (installed as ``ppl_vae.guides``)."""

from .amortized import AmortizedGuide, Encoder, MeanFieldNormal
from .hierarchical import ConditionalEncoder, HierarchicalGuide
from .posteriors import FLOWS, GUIDES, PAPER_LOG_VAR_RANGE, DiagonalNormal, FlowPosterior, LowRankNormal, posterior_head

__all__ = [
    "AmortizedGuide",
    "Encoder",
    "MeanFieldNormal",
    "HierarchicalGuide",
    "ConditionalEncoder",
    "DiagonalNormal",
    "LowRankNormal",
    "FlowPosterior",
    "FLOWS",
    "GUIDES",
    "posterior_head",
    "PAPER_LOG_VAR_RANGE",
]
