r"""Simulation-based calibration of the amortized posterior (Talts et al. 2018, arXiv:1804.06788).

Draw :math:`z \sim p(z)`, :math:`x \sim p(x|z)`, then :math:`z'_{1..L} \sim q(z|x)`; the rank of
each coordinate of z among the :math:`z'` is uniform on {0..L} for every coordinate when q is
the exact posterior. Over-confident guides pile ranks at the ends (a U shape), biased ones at
one end. The uniformity statistic is a χ² test per latent coordinate, combined with a
Bonferroni correction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro.poutine as poutine
import torch
from scipy import stats

from ..inference.importance import latent_sites, max_plate_nesting, vectorize
from ..inference.params import local_params
from ..inference.predictive import prior_predictive

__all__ = ["SBCResult", "simulation_based_calibration"]


@dataclass
class SBCResult:
    ranks: np.ndarray  # (M, Z) ranks in 0..L, one column per latent coordinate
    num_draws: int  # L
    pvalues: np.ndarray  # (Z,) χ² uniformity p-value per coordinate

    @property
    def pvalue(self) -> float:
        """Bonferroni-combined p-value of uniformity over all coordinates."""
        return float(min(1.0, self.pvalues.min() * len(self.pvalues)))


def _uniformity_pvalue(ranks: np.ndarray, num_draws: int, bins: int) -> float:
    edges = np.linspace(0, num_draws + 1, bins + 1)
    counts, _ = np.histogram(ranks, bins=edges)
    return float(stats.chisquare(counts).pvalue)


@torch.no_grad()
def simulation_based_calibration(
    model, guide, data_dim: int, simulations: int = 500, num_draws: int = 99, bins: int = 10, device="cpu", dtype=None
) -> SBCResult:
    """Ranks of prior draws among guide draws for ``simulations`` simulated data sets of one point."""
    latents, x = prior_predictive(model, simulations, data_dim, device, dtype)  # z ~ p(z), x ~ p(x|z)
    nesting = max_plate_nesting(model, guide, x)
    guide_trace = poutine.trace(vectorize(local_params(guide), num_draws, nesting)).get_trace(x)
    ranks = []
    for site in latent_sites(guide_trace):
        true = latents[site["name"]].reshape(simulations, -1)  # (M, d)
        draws = site["value"].reshape(num_draws, simulations, -1)  # (L, M, d)
        ranks.append((draws < true).sum(0))
    ranks_np = torch.cat(ranks, dim=-1).cpu().numpy()
    pvalues = np.array([_uniformity_pvalue(ranks_np[:, j], num_draws, bins) for j in range(ranks_np.shape[1])])
    return SBCResult(ranks_np, num_draws, pvalues)
