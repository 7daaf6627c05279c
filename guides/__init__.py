"""Inference programs q(z | x) (installed as ``ppl_vae.guides``)."""

from .amortized import AmortizedGuide, Encoder
from .posteriors import FLOWS, GUIDES, DiagonalNormal, FlowPosterior, LowRankNormal, posterior_head

__all__ = [
    "AmortizedGuide",
    "Encoder",
    "DiagonalNormal",
    "LowRankNormal",
    "FlowPosterior",
    "FLOWS",
    "GUIDES",
    "posterior_head",
]
