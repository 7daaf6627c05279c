r"""The generative program p(z) p(x | z).

.. math::

    z_i \sim p(z), \qquad x_i \mid z_i \sim p(x \mid f_\theta(z_i)), \qquad i = 1..B,

written as a Pyro model with one ``pyro.plate("data")`` and the sites ``"z"`` and ``"x"``.
The canonical instance has ``p(z) = N(0, I)`` and ``p(x | z) = N(f(z), σ² I)`` with σ
fixed. The program never knows the data set's size: the bench scales minibatches.

The model registers every parameter of its parts with ``pyro.module("model", self)``, Pyro's
idiom, so ``pyro.infer.SVI`` with any ELBO and any ``pyro.optim`` optimizer trains it as written.

A **Bayesian decoder** (Kingma & Welling 2014, arXiv:1312.6114, appendix F, "full variational
Bayes") gives the decoder's output layer a prior: its weight and bias are global latents θ,
sampled once per data set, outside the data plate,

.. math::

    \theta = (W, b) \sim \mathcal N(0, s^2 I), \qquad
    x_i \mid z_i, \theta \sim p(x \mid W h(z_i) + b),

(:class:`BayesianLinear`); the guide holds their q(θ).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["VAE", "BayesianLinear", "DECODER_PRIORS", "split_output"]


def split_output(decoder: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """``(body, output layer)`` of a decoder that ends in an ``nn.Linear`` (a ``ValueError`` otherwise).

    Example:
        >>> from ppl_vae.models import MLP
        >>> body, out = split_output(MLP([2, 8, 4]))
        >>> type(body).__name__, out.out_features
        ('Sequential', 4)
    """
    if isinstance(decoder, nn.Linear):
        return nn.Identity(), decoder
    if isinstance(decoder, nn.Sequential) and len(decoder) and isinstance(decoder[-1], nn.Linear):
        return nn.Sequential(*list(decoder)[:-1]), decoder[-1]
    raise ValueError(f"a Bayesian output layer needs a decoder that ends in nn.Linear, not {type(decoder).__name__}")


class BayesianLinear(nn.Module):
    r"""An output layer :math:`y = W h + b` whose weight and bias are global latents with a Gaussian prior.

    ``prior(like)`` returns ``{site: p(θ)}`` (sites ``"w_out"`` ``(out, in)`` and ``"b_out"``
    ``(out,)``), ``forward(h, w_out, b_out)`` the layer at drawn weights, broadcast over any
    leading dims of both (a particle dim in front of the weights). ``initial`` holds the
    values of the layer it replaces: where a guide's q(θ) may start.

    Example:
        >>> layer = BayesianLinear(nn.Linear(3, 2))
        >>> {k: tuple(p.event_shape) for k, p in layer.prior(torch.zeros(1)).items()}
        {'w_out': (2, 3), 'b_out': (2,)}
        >>> layer(torch.zeros(5, 3), torch.zeros(4, 1, 2, 3), torch.ones(4, 1, 2)).shape  # (K, B, out)
        torch.Size([4, 5, 2])
    """

    SITES = ("w_out", "b_out")

    def __init__(self, layer: nn.Linear, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.in_features, self.out_features = layer.in_features, layer.out_features
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
        self.initial = {"w_out": layer.weight.detach().clone(), "b_out": bias.detach().clone()}

    def prior(self, like: torch.Tensor) -> dict[str, dist.Distribution]:
        shapes = {"w_out": (self.out_features, self.in_features), "b_out": (self.out_features,)}
        return {
            name: dist.Normal(like.new_zeros(shape), self.scale).to_event(len(shape)) for name, shape in shapes.items()
        }

    def forward(self, h: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor) -> torch.Tensor:
        return (h.unsqueeze(-2) @ w_out.transpose(-1, -2)).squeeze(-2) + b_out  # (..., B, out)


DECODER_PRIORS = {"none": None, "normal": BayesianLinear}
"""``--decoder-prior`` name -> the Bayesian output layer it builds from the decoder's last ``nn.Linear`` (or None)."""


class VAE(nn.Module):
    """p(z) p(x | z) from a prior, a decoder network and a likelihood.

    Args:
        prior: module, ``prior()`` returns p(z) with event shape ``(L,)``.
        decoder: network ``(..., L) -> (..., D * likelihood.params_per_pixel)``.
        likelihood: module, ``likelihood(decoder(z))`` returns p(x | z) with event shape ``(D,)``.
        output: a :class:`BayesianLinear` output layer after ``decoder``, its weights global
            latents (``None``: the decoder is the whole network, its weights point estimates).

    Example:
        >>> from ppl_vae.models import MLP, StandardNormal, LIKELIHOODS
        >>> vae = VAE(StandardNormal(2), MLP([2, 8, 4]), LIKELIHOODS["normal"](data_dim=4, sigma=0.1))
        >>> tr = pyro.poutine.trace(vae.model).get_trace(torch.zeros(3, 4))
        >>> tr.nodes["z"]["value"].shape, tr.nodes["x"]["is_observed"]
        (torch.Size([3, 2]), True)
        >>> tr.nodes["model$$$decoder.0.weight"]["type"]
        'param'
    """

    def __init__(
        self, prior: nn.Module, decoder: nn.Module, likelihood: nn.Module, output: BayesianLinear | None = None
    ):
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood
        self.output = output

    def model(self, x: torch.Tensor) -> None:
        pyro.module("model", self)
        theta = {}
        if self.output is not None:  # global latents: one draw per data set, outside the data plate
            theta = {name: pyro.sample(name, p) for name, p in self.output.prior(x).items()}
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            h = self.decoder(z)
            pyro.sample("x", self.likelihood(self.output(h, **theta) if self.output is not None else h), obs=x)
