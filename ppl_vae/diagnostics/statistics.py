r"""Means and their standard errors over test points: the one place they are computed.

.. math::

    \bar v = \frac1N \sum_i v_i, \qquad \mathrm{SE}(\bar v) = \frac{\mathrm{sd}(v)}{\sqrt N},

with the sample standard deviation (``ddof = 1``). A difference between two variants on the
same points is *paired*: its SE is that of the per-point differences, which is much smaller
than the unpaired SEs when both find the same points hard.

The held-out elpds handed to ArviZ (:mod:`ppl_vae.diagnostics.elpd`) and the comparison table
built from ``arviz.compare`` use ArviZ's convention instead, ``ddof = 0``: their SEs are these
times :math:`\sqrt{(N-1)/N}`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["mean_se", "paired_difference", "seed_sd_of_difference", "interval95"]


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error of ``values`` (a 1-D array or tensor); SE 0 for one value.

    Example:
        >>> mean_se([1.0, 2.0, 3.0, 4.0])
        (2.5, 0.6454972243679028)
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) < 2:
        return float(v.mean()), 0.0
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))


def paired_difference(reference, other) -> tuple[float, float]:
    """Mean and standard error of ``reference - other`` over the same points."""
    return mean_se(np.asarray(reference, dtype=np.float64) - np.asarray(other, dtype=np.float64))


def seed_sd_of_difference(reference_by_seed, other_by_seed) -> float:
    r"""SD over seeds (ddof 1) of the per-seed mean difference :math:`\bar d_s = \frac1N \sum_i (r_{si} - o_{si})`.

    Seed s of one variant is paired with seed s of the other, each ``(S, N)`` on the same points:
    the spread retraining with another seed brings to a difference, which the paired SE over test
    points (one training run) does not see. NaN for one seed.

    Example:
        >>> seed_sd_of_difference([[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 2.0]])  # Δ_s = 1, 2
        0.7071067811865476
    """
    d = (np.asarray(reference_by_seed, dtype=np.float64) - np.asarray(other_by_seed, dtype=np.float64)).mean(-1)
    return float(d.std(ddof=1)) if len(d) > 1 else float("nan")


def interval95(values) -> dict[str, float]:
    """The mean of ``values`` in [0, 1] (rates) with a normal 95% interval, clipped to [0, 1]."""
    mean, se = mean_se(values)
    return {"mean": mean, "low": max(0.0, mean - 1.96 * se), "high": min(1.0, mean + 1.96 * se)}
