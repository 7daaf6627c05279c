r"""Schedules of training progress: the KL weight β and Adam's learning rate.

Each is a function of the step counters alone (progress in epochs, or the fraction of training
done), so a resumed run follows the same schedule as the run it continues.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["ANNEALING", "LR_SCHEDULES"]

ANNEALING: dict[str, Callable[[float, float, int], float]] = {
    "none": lambda beta, epoch, length: beta,
    "linear": lambda beta, epoch, length: beta * min(1.0, epoch / length),
    # Fu et al. 2019 (arXiv:1903.10145): ramp over the first half of each cycle, then hold
    "cyclical": lambda beta, epoch, length: beta * min(1.0, 2.0 * math.fmod(epoch, length) / length),
}
"""Schedule name -> ``(beta, fractional_epoch, length) -> beta at that point``."""


LR_SCHEDULES: dict[str, Callable[[float, float, float], float]] = {
    "constant": lambda lr, lr_final, progress: lr,
    # Loshchilov & Hutter 2017 (arXiv:1608.03983), one cycle without restarts
    "cosine": lambda lr, lr_final, progress: (
        lr_final + 0.5 * (lr - lr_final) * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    ),
}
"""Schedule name -> ``(lr, lr_final, fraction of training done) -> learning rate there``.

A function of the step counters alone, so a resumed run follows the same schedule."""
