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

__all__ = ["mean_se", "paired_difference", "interval95"]


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


def interval95(values) -> dict[str, float]:
    """The mean of ``values`` in [0, 1] (rates) with a normal 95% interval, clipped to [0, 1]."""
    mean, se = mean_se(values)
    return {"mean": mean, "low": max(0.0, mean - 1.96 * se), "high": min(1.0, mean + 1.96 * se)}
