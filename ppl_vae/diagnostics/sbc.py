r"""Simulation-based calibration of the amortized posterior (Talts et al. 2018, arXiv:1804.06788).

Draw :math:`z \sim p(z)`, :math:`x \sim p(x|z)`, then :math:`z'_{1..L} \sim q(z|x)`; the rank of
each coordinate of z among the :math:`z'` is uniform on {0..L} for every coordinate when q is
the exact posterior. Over-confident guides pile ranks at the ends (a U shape), biased ones at
one end. The uniformity statistic is a χ² test per latent coordinate, combined with a
Bonferroni correction.

Discrete coordinates (a class label y, one-hot or an index) tie with many of the draws; the
rank is then randomised over the ties, :math:`r = \#\{l: z'_l < z\} + U\{0, \dots, \#\{l: z'_l = z\}\}`,
which is uniform on {0..L} under an exact posterior as well (Talts et al. 2018, section 4.1;
without it an exact discrete posterior fails the test). The tie-breaking noise comes from its
own generator, so the program's draws are those of a run without ties.

The ranks are those of the local latents. Global latents θ have no calibration here: q(θ) is
fitted to the training set, not to one simulated data set; the caller holds θ at a draw of
q(θ) in both programs and calibrates q(z | x, θ) against p(z | x, θ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro.poutine as poutine
import torch
from scipy import stats

from ..inference.importance import local_latent_sites, max_plate_nesting, vectorize
from ..inference.params import local_params
from ..inference.predictive import repeat_rows, simulate

__all__ = ["SBCResult", "SBCSkipped", "simulation_based_calibration", "ranks_with_ties"]


@dataclass
class SBCResult:
    ranks: np.ndarray  # (M, Z) ranks in 0..L, one column per latent coordinate
    num_draws: int  # L
    pvalues: np.ndarray  # (Z,) χ² uniformity p-value per coordinate

    @property
    def pvalue(self) -> float:
        """Bonferroni-combined p-value of uniformity over all coordinates."""
        return float(min(1.0, self.pvalues.min() * len(self.pvalues)))


@dataclass(frozen=True)
class SBCSkipped:
    """Calibration could not be run on this program: ``reason`` says which of its two needs failed."""

    reason: str


def _uniformity_pvalue(ranks: np.ndarray, num_draws: int, bins: int) -> float:
    edges = np.linspace(0, num_draws + 1, bins + 1)
    counts, _ = np.histogram(ranks, bins=edges)
    return float(stats.chisquare(counts).pvalue)


def ranks_with_ties(true: torch.Tensor, draws: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rank of ``true`` ``(M, d)`` among ``draws`` ``(L, M, d)``, ties broken uniformly at random: ``(M, d)``."""
    less = (draws < true).sum(0)
    ties = (draws == true).sum(0)
    if not bool(ties.any()):
        return less
    u = torch.rand(ties.shape, generator=generator, dtype=torch.float64).to(ties.device)
    return less + torch.floor(u * (ties + 1).double()).long()


@torch.no_grad()
def simulation_based_calibration(
    model,
    guide,
    data_dim: int,
    simulations: int = 500,
    num_draws: int = 99,
    bins: int = 10,
    device="cpu",
    dtype=None,
    like: torch.Tensor | None = None,
    seed: int = 0,
    **inputs,
) -> SBCResult | SBCSkipped:
    """Ranks of prior draws among guide draws for ``simulations`` simulated data sets of one point.

    ``like`` are data rows the model runs on (what a conditional program conditions on; the
    elements its observed sites model are simulated), ``inputs`` the programs' other inputs.
    :class:`SBCSkipped` says why where one of calibration's two needs is not met: a simulated x to
    hand the guide (an observed site holding x, or some of its columns), and a latent site both
    programs sample.
    """
    sim = simulate(model, simulations, data_dim, device, dtype, like, **inputs)  # z ~ p(z), x ~ p(x|z)
    if sim.x is None:
        names = ", ".join(map(repr, sim.observed)) or "none"
        return SBCSkipped(
            f"no simulated x to hand the guide: no observed site of the model holds x or some of its columns "
            f"(observed sites: {names})"
        )
    rows = repeat_rows(inputs, simulations)
    x = sim.x
    nesting = max_plate_nesting(model, guide, x, **rows)
    guide_trace = poutine.trace(vectorize(local_params(guide), num_draws, nesting)).get_trace(x, **rows)
    generator = torch.Generator().manual_seed(seed)
    ranks = []
    for site in local_latent_sites(guide_trace):
        if site["name"] not in sim.latents:
            continue
        true = sim.latents[site["name"]].reshape(simulations, -1)  # (M, d)
        draws = site["value"].expand((num_draws,) + site["value"].shape[1:]).reshape(num_draws, simulations, -1)
        ranks.append(ranks_with_ties(true, draws, generator))  # (M, d)
    if not ranks:
        model_latents = ", ".join(map(repr, sim.latents)) or "none"
        return SBCSkipped(f"no latent site drawn from the prior is sampled by the guide (the model's: {model_latents})")
    ranks_np = torch.cat(ranks, dim=-1).cpu().numpy()
    pvalues = np.array([_uniformity_pvalue(ranks_np[:, j], num_draws, bins) for j in range(ranks_np.shape[1])])
    return SBCResult(ranks_np, num_draws, pvalues)
