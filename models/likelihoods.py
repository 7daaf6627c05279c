r"""Observation models p(x | z): distributions built from the decoder's output.

A likelihood is a module that turns the decoder output ``(..., D * params_per_pixel)``
into a distribution with event shape ``(D,)``. The canonical one is the Normal with a
fixed, visible scale σ:

.. math::

    \log p(x \mid z) = -\frac{\lVert x - f(z) \rVert^2}{2\sigma^2} - \frac{D}{2}\log(2\pi\sigma^2),

an MSE with an exchange rate. The other families swap the distribution (Laplace, Student-t,
Bernoulli, continuous Bernoulli) or let σ be learned (one scalar, one per pixel, or
predicted by the decoder).

The registry :data:`LIKELIHOODS` maps a command-line name to a constructor taking
``(data_dim, sigma)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Likelihood", "LocScale", "Logits", "IsotropicNormal", "LIKELIHOODS", "check_scale"]

MIN_SCALE = 1e-3  # floor for learned scales, keeps log p bounded on constant pixels


def check_scale(sigma: float) -> float:
    """Return ``sigma`` as a float, or raise ``ValueError`` unless it is finite and > 0."""
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"sigma must be a number, got {sigma!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    return value


class IsotropicNormal(dist.Normal):
    r"""Elementwise :math:`\mathcal N(\mathrm{loc}, \sigma^2)` with one scalar σ.

    The same distribution as ``Normal(loc, σ)``; its log-density
    :math:`-(x - \mathrm{loc})^2 / (2\sigma^2) - \log \sigma - \tfrac12 \log 2\pi` is one fused
    squared-error kernel instead of broadcasting σ to the data's shape and taking its log
    elementwise — the hot spot of training and of importance sampling with many particles.
    """

    def __init__(self, loc: torch.Tensor, sigma: float, validate_args=None):
        self.sigma = float(sigma)
        super().__init__(loc, torch.tensor(self.sigma, dtype=loc.dtype, device=loc.device), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(IsotropicNormal, _instance)
        new.sigma = self.sigma
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(self.loc.shape, value.shape)
        sq = F.mse_loss(self.loc.expand(shape), value.expand(shape), reduction="none")
        return sq.mul_(-0.5 / self.sigma**2).add_(-math.log(self.sigma) - 0.5 * math.log(2 * math.pi))


class Likelihood(nn.Module):
    """Base class: ``forward(decoder_output) -> Distribution`` with event shape ``(D,)``.

    Attributes:
        params_per_pixel: how many decoder outputs each pixel needs.
        support: ``(low, high)`` interval the data must lie in.
    """

    params_per_pixel: int = 1
    support: tuple[float, float] = (-math.inf, math.inf)

    def check_data(self, x: torch.Tensor, name: str = "data") -> None:
        """Raise ``ValueError`` if ``x`` lies outside this likelihood's support."""
        low, high = self.support
        lo, hi = float(x.min()), float(x.max())
        if lo < low or hi > high:
            raise ValueError(
                f"{name} has values in [{lo:.3g}, {hi:.3g}] but the {self.name} likelihood "
                f"supports [{low}, {high}]; rescale the data or choose another likelihood"
            )

    @property
    def name(self) -> str:
        return type(self).__name__


class LocScale(Likelihood):
    r"""A location-scale family ``family(loc=f(z), scale=σ)`` over every pixel.

    Args:
        family: a Pyro distribution class taking ``loc`` and ``scale``.
        data_dim: D, the number of pixels.
        sigma: the scale σ (fixed), or its initial value (learned).
        scale: ``"fixed"`` (a buffer), ``"learned"`` (one scalar parameter),
            ``"pixel"`` (one parameter per pixel) or ``"hetero"`` (predicted by the decoder).

    Example:
        >>> lik = LocScale(dist.Normal, data_dim=3, sigma=0.5)
        >>> lik(torch.zeros(2, 3)).event_shape
        torch.Size([3])
    """

    SCALES = ("fixed", "learned", "pixel", "hetero")

    def __init__(self, family: Callable, data_dim: int, sigma: float = 0.1, scale: str = "fixed", **family_kwargs):
        super().__init__()
        sigma = check_scale(sigma)
        if scale not in self.SCALES:
            raise ValueError(f"unknown scale mode {scale!r}; choose one of {', '.join(self.SCALES)}")
        self.family = family
        self.family_kwargs = family_kwargs
        self.scale_mode = scale
        self.params_per_pixel = 2 if scale == "hetero" else 1
        log_sigma = torch.tensor(math.log(sigma))
        if scale == "fixed":
            # the buffer is σ (saved with the weights, float64 so it is exact whatever precision the
            # network runs in); _sigma is its value as a float, which spares a device sync a step and
            # is read from the buffer again whenever a state dict is loaded
            self.register_buffer("sigma", torch.tensor(sigma, dtype=torch.float64))
            self._sigma = sigma
            self.register_load_state_dict_post_hook(LocScale._read_sigma)
        elif scale == "learned":
            self.log_sigma = nn.Parameter(log_sigma)
        elif scale == "pixel":
            self.log_sigma = nn.Parameter(log_sigma.expand(data_dim).clone())

    @property
    def name(self) -> str:
        return f"{self.family.__name__}({self.scale_mode} scale)"

    @staticmethod
    def _read_sigma(module: LocScale, incompatible_keys) -> None:
        module._sigma = float(module.sigma)

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        if self.scale_mode == "fixed" and self.family is dist.Normal:
            return IsotropicNormal(out, self._sigma).to_event(1)
        if self.scale_mode == "hetero":
            loc, raw = out.chunk(2, dim=-1)  # (..., D) each
            scale = F.softplus(raw) + MIN_SCALE
        elif self.scale_mode == "fixed":
            loc, scale = out, out.new_full((), self._sigma)
        else:
            loc, scale = out, self.log_sigma.exp().clamp(min=MIN_SCALE)
        return self.family(loc=loc, scale=scale.expand_as(loc), **self.family_kwargs).to_event(1)


class Logits(Likelihood):
    """A family parameterised by logits ``f(z)``, for data in [0, 1].

    Bernoulli is evaluated as the cross-entropy on grey values too (validation of the
    binary support is off on purpose, as in the usual "BCE on [0, 1] pixels"); the
    continuous Bernoulli (Loaiza-Ganem & Cunningham 2019, arXiv:1907.06845) is its
    properly normalised counterpart.
    """

    support = (0.0, 1.0)

    def __init__(self, family: Callable, data_dim: int, sigma: float = 0.1, validate: bool = True):
        super().__init__()
        self.family = family
        self.validate = validate

    @property
    def name(self) -> str:
        return self.family.__name__

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        return self.family(logits=out, validate_args=self.validate).to_event(1)


def _student_t(loc, scale, df=3.0):
    return dist.StudentT(torch.as_tensor(df, dtype=loc.dtype, device=loc.device), loc, scale)


_student_t.__name__ = "StudentT"

LIKELIHOODS: dict[str, Callable[..., Likelihood]] = {
    "normal": partial(LocScale, dist.Normal, scale="fixed"),
    "normal-learned": partial(LocScale, dist.Normal, scale="learned"),
    "normal-pixel": partial(LocScale, dist.Normal, scale="pixel"),
    "normal-hetero": partial(LocScale, dist.Normal, scale="hetero"),
    "laplace": partial(LocScale, dist.Laplace, scale="fixed"),
    "studentt": partial(LocScale, _student_t, scale="fixed"),
    "bernoulli": partial(Logits, dist.Bernoulli, validate=False),
    "continuous-bernoulli": partial(Logits, dist.ContinuousBernoulli),
}
"""Name on the command line -> constructor ``(data_dim, sigma) -> Likelihood``."""
