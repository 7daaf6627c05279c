r"""A user's own program: a conditional VAE that completes an image from one quadrant (Sohn et al. 2015).

The task of Sohn, Lee & Yan 2015 ("Learning structured output representation using deep
conditional generative models", NeurIPS) and of Pyro's ``examples/cvae``: given the
bottom-left quadrant :math:`x_{in}` of an MNIST digit, predict the other three :math:`x_{out}`.

.. math::

    z \sim p(z \mid x_{in}) = N(\mu_p(x_{in}), \mathrm{diag}\, s_p(x_{in})^2), \qquad
    x_{out} \sim \prod_{d \in out} \mathrm{Bernoulli}(f_d(z)), \qquad
    q(z \mid x) = N(\mu_q(x), \mathrm{diag}\, s_q(x)^2)

The observed site is the whole image ``x`` with its distribution masked to the output pixels
(``dist.Bernoulli(...).mask(out).to_event(1)``): the input quadrant is given, not modelled, so
the bench's held-out log p(x) *is* the conditional log-likelihood log p(x_out | x_in) (an
IWAE-K estimate), and its pictures keep the given quadrant. The deterministic regressor of the
same size (``regressor``) is the same program without z: x_in -> two hidden layers -> the
logits of x_out, whose log p(x_out | x_in) is exact. Compare them on equal terms with::

    ppl-vae compare --variants examples/quadrants/*.toml --out runs/quadrants   # make cvae

Pixels are grey values in [0, 1] under a Bernoulli (binary cross-entropy) likelihood, as in
Pyro's example, so the numbers compare with its tutorial's table (negative CLL per image).
"""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out)
    )


def input_quadrant(image_shape: tuple[int, ...]) -> torch.Tensor:
    """The bottom-left quadrant as a bool mask over the flattened image ``(D,)`` (Pyro's one-quadrant task)."""
    h, w = image_shape[-2:]
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[h // 2 :, : w // 2] = True
    return mask.reshape(-1)


class Quadrants(nn.Module):
    """The masks and the input convention shared by the CVAE and the regressor: unknown pixels read as -1."""

    def __init__(self, image_shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("given", input_quadrant(image_shape))

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.given, x, -torch.ones_like(x))

    def likelihood(self, logits: torch.Tensor) -> dist.Distribution:
        """p(x | ·) over the output pixels only: the input quadrant is masked out of the likelihood."""
        return dist.Bernoulli(logits=logits, validate_args=False).mask(~self.given).to_event(1)


class QuadrantCVAE(nn.Module):
    def __init__(self, data_dim: int, latent_dim: int, image_shape: tuple[int, ...], hidden: int = 500):
        super().__init__()
        self.quadrants = Quadrants(image_shape)
        self.prior_net = mlp(data_dim, 2 * latent_dim, hidden)  # p(z | x_in)
        self.recognition_net = mlp(data_dim, 2 * latent_dim, hidden)  # q(z | x_in, x_out)
        self.generation_net = mlp(latent_dim, data_dim, hidden)  # logits of p(x_out | z)

    @staticmethod
    def normal(params: torch.Tensor) -> dist.Distribution:
        loc, raw = params.chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.normal(self.prior_net(self.quadrants.inputs(x))))
            pyro.sample("x", self.quadrants.likelihood(self.generation_net(z)), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.normal(self.recognition_net(x)))


class QuadrantRegressor(nn.Module):
    """The deterministic baseline: no latent, x_out predicted from x_in by an MLP of the CVAE's width."""

    def __init__(self, data_dim: int, image_shape: tuple[int, ...], hidden: int = 500):
        super().__init__()
        self.quadrants = Quadrants(image_shape)
        self.net = mlp(data_dim, data_dim, hidden)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", self.quadrants.likelihood(self.net(self.quadrants.inputs(x))), obs=x)

    def guide(self, x):
        pass  # no latent sites: the ELBO is the log-likelihood


def cvae(data_dim: int, latent_dim: int, image_shape: tuple[int, ...]) -> QuadrantCVAE:
    return QuadrantCVAE(data_dim, latent_dim, image_shape)


def regressor(data_dim: int, latent_dim: int, image_shape: tuple[int, ...]) -> QuadrantRegressor:
    return QuadrantRegressor(data_dim, image_shape)


def cvae_small(data_dim: int, latent_dim: int, image_shape: tuple[int, ...]) -> QuadrantCVAE:
    """A small CVAE for tests and the digits data set."""
    return QuadrantCVAE(data_dim, latent_dim, image_shape, hidden=64)


def regressor_small(data_dim: int, latent_dim: int, image_shape: tuple[int, ...]) -> QuadrantRegressor:
    return QuadrantRegressor(data_dim, image_shape, hidden=64)
