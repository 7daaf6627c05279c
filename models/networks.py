"""Deterministic networks shared by generative and inference programs.

Every network maps a tensor with arbitrary leading batch dimensions
``(..., in)`` to ``(..., out)``, so programs can be run under vectorized
particle plates (``(K, B, ...)``) without reshaping by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["MLP", "GatedDense", "Join", "ConvDecoder", "ConvEncoder", "NETWORKS", "LAYERS", "INITS", "stack"]


class MLP(nn.Sequential):
    """A multilayer perceptron ``in -> hidden... -> out`` with ReLU between layers.

    Args:
        sizes: layer widths, input first and output last (at least two).
        activate_last: end with a ReLU too (for hidden features rather than outputs).

    Example:
        >>> MLP([4, 8, 2])(torch.zeros(3, 5, 4)).shape
        torch.Size([3, 5, 2])
    """

    def __init__(self, sizes: Sequence[int], activate_last: bool = False):
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {list(sizes)}")
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2 or activate_last:
                layers.append(nn.ReLU())
        super().__init__(*layers)
        self.out_features = sizes[-1]


class GatedDense(nn.Module):
    r"""A gated dense layer: an affine map gated elementwise by a second one.

    .. math::

        \mathrm{GatedDense}(x) = (W_h x + b_h) \odot \sigma(W_g x + b_g)

    The layer of the VampPrior paper's networks; weights start He-normal,
    :math:`W \sim \mathcal N(0, 2 / \text{fan-in})`, as there. ``W_h`` and ``W_g`` are the two halves
    of one matrix, so a layer is one matrix product.

    References:
        Dauphin et al. 2017, "Language modeling with gated convolutional networks", arXiv:1612.08083.
        Tomczak & Welling 2018, "VAE with a VampPrior", arXiv:1705.07120.

    Example:
        >>> GatedDense(4, 3)(torch.zeros(2, 5, 4)).shape
        torch.Size([2, 5, 3])
    """

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.linear = nn.Linear(n_in, 2 * n_out)
        nn.init.kaiming_normal_(self.linear.weight)
        self.out_features = n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = self.linear(x).chunk(2, dim=-1)  # (..., out) each
        return h * torch.sigmoid(g)


def _relu_layer(n_in: int, n_out: int) -> nn.Module:
    layer = nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU())
    layer.out_features = n_out
    return layer


LAYERS: dict[str, Callable[[int, int], nn.Module]] = {"mlp": _relu_layer, "gated": GatedDense}
"""Network name -> one hidden layer ``(in, out)``: what the two-layer hierarchical programs are built from."""


def stack(layer: Callable[[int, int], nn.Module], sizes: Sequence[int]) -> nn.Sequential:
    """Hidden layers ``sizes[0] -> sizes[1] -> ...``, each made by ``layer(in, out)``."""
    if len(sizes) < 2:
        raise ValueError(f"a stack of layers needs at least input and output sizes, got {list(sizes)}")
    net = nn.Sequential(*(layer(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:])))
    net.out_features = sizes[-1]
    return net


class Join(nn.Module):
    r"""Two inputs, each through its own layer, concatenated and passed through ``body``.

    ``forward(u, v) = body([left(u), right(v)])``, with the leading batch dimensions of the two
    broadcast: ``u`` of shape ``(B, D)`` meets ``v`` of shape ``(K, B, L)`` under a particle plate,
    and ``left(u)`` is computed once for all K particles. Used for :math:`q(z_1 \mid x, z_2)` and
    :math:`p(x \mid z_1, z_2)` in the two-layer hierarchical VAE.

    Example:
        >>> join = Join(GatedDense(4, 3), GatedDense(2, 3), GatedDense(6, 5))
        >>> join(torch.zeros(7, 4), torch.zeros(10, 7, 2)).shape
        torch.Size([10, 7, 5])
    """

    def __init__(self, left: nn.Module, right: nn.Module, body: nn.Module):
        super().__init__()
        self.left, self.right, self.body = left, right, body
        self.out_features = body.out_features

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        hu, hv = self.left(u), self.right(v)
        batch = torch.broadcast_shapes(hu.shape[:-1], hv.shape[:-1])
        return self.body(torch.cat([hu.expand(batch + hu.shape[-1:]), hv.expand(batch + hv.shape[-1:])], dim=-1))


def _flat_batch(fn, x: torch.Tensor, event_dims: int) -> torch.Tensor:
    """Apply ``fn`` to ``x`` with its leading batch dimensions flattened into one."""
    batch = x.shape[: x.dim() - event_dims]
    y = fn(x.reshape((-1,) + x.shape[x.dim() - event_dims :]))
    return y.reshape(batch + y.shape[1:])


def _conv_geometry(image_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(image_shape) == 2:
        image_shape = (1, *image_shape)
    if len(image_shape) != 3:
        raise ValueError(f"convolutional networks need (C, H, W) or (H, W) images, got {tuple(image_shape)}")
    return tuple(int(s) for s in image_shape)  # type: ignore[return-value]


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions and a linear layer: ``(..., C*H*W) -> (..., hidden)``."""

    def __init__(self, image_shape: Sequence[int], hidden_dim: int = 256, channels: int = 32):
        super().__init__()
        self.image_shape = _conv_geometry(image_shape)
        c, h, w = self.image_shape
        self.net = nn.Sequential(
            nn.Conv2d(c, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * channels * math.ceil(h / 4) * math.ceil(w / 4), hidden_dim),
            nn.ReLU(),
        )
        self.out_features = hidden_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _flat_batch(lambda v: self.net(v.reshape((-1,) + self.image_shape)), x, 1)


class ConvDecoder(nn.Module):
    """A linear layer and two transposed convolutions: ``(..., latent) -> (..., out_channels*H*W)``.

    The output is flattened so a likelihood sees one vector per datapoint; for a
    likelihood with several parameters per pixel ``out_channels = C * params``.
    """

    def __init__(self, latent_dim: int, image_shape: Sequence[int], params_per_pixel: int = 1, channels: int = 32):
        super().__init__()
        c, h, w = _conv_geometry(image_shape)
        self.h4, self.w4 = math.ceil(h / 4), math.ceil(w / 4)
        self.channels = channels
        self.image_hw = (h, w)
        self.fc = nn.Sequential(nn.Linear(latent_dim, 2 * channels * self.h4 * self.w4), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(channels, c * params_per_pixel, 4, stride=2, padding=1),
        )
        self.out_features = c * params_per_pixel * h * w

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        y = self.net(self.fc(z).reshape(-1, 2 * self.channels, self.h4, self.w4))
        h, w = self.image_hw
        # stride-2 upsampling overshoots odd sizes; crop back to the image
        return y[..., :h, :w].reshape(y.shape[0], -1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _flat_batch(self._decode, z, 1)


def _mlp_encoder(data_dim, image_shape, hidden_dim, layers):
    return MLP([data_dim] + [hidden_dim] * layers, activate_last=True)


def _mlp_decoder(latent_dim, data_dim, image_shape, hidden_dim, layers, params_per_pixel):
    return MLP([latent_dim] + [hidden_dim] * layers + [data_dim * params_per_pixel])


def _gated_encoder(data_dim, image_shape, hidden_dim, layers):
    return stack(GatedDense, [data_dim] + [hidden_dim] * layers)


def _gated_decoder(latent_dim, data_dim, image_shape, hidden_dim, layers, params_per_pixel):
    net = nn.Sequential(
        stack(GatedDense, [latent_dim] + [hidden_dim] * layers), nn.Linear(hidden_dim, data_dim * params_per_pixel)
    )
    net.out_features = data_dim * params_per_pixel
    return net


class _Identity(nn.Identity):
    """The identity with the ``out_features`` a posterior head reads."""

    def __init__(self, features: int):
        super().__init__()
        self.out_features = features


NETWORKS: dict[str, tuple[Callable, Callable]] = {
    "mlp": (_mlp_encoder, _mlp_decoder),
    # a linear VAE: x -> q(z|x) by one affine map, z -> f(z) = Wz + b (probabilistic PCA's model)
    "linear": (
        lambda data_dim, image_shape, hidden_dim, layers: _Identity(data_dim),
        lambda latent_dim, data_dim, image_shape, hidden_dim, layers, ppp: nn.Linear(latent_dim, data_dim * ppp),
    ),
    # gated dense layers (the VampPrior paper's MLPs): encoder D -> h -> ... -> h, decoder L -> h -> ... -> h -> D
    "gated": (_gated_encoder, _gated_decoder),
    "conv": (
        lambda data_dim, image_shape, hidden_dim, layers: ConvEncoder(image_shape, hidden_dim),
        lambda latent_dim, data_dim, image_shape, hidden_dim, layers, ppp: ConvDecoder(latent_dim, image_shape, ppp),
    ),
}
"""Network name -> (encoder constructor, decoder constructor)."""


def he_normal(module: nn.Module) -> None:
    r"""He initialisation of every linear layer in ``module``: :math:`W \sim \mathcal N(0, 2/\text{fan-in})`.

    Heads and output layers included, biases left as they are: the initialisation of the
    VampPrior paper's code, where every ``nn.Linear`` is drawn so.

    References:
        He et al. 2015, "Delving deep into rectifiers", arXiv:1502.01852.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight)


INITS: dict[str, Callable[[nn.Module], None]] = {
    "default": lambda module: None,  # each layer's own: PyTorch's, He-normal in gated layers
    "he": he_normal,
}
"""Name on the command line -> a function that (re)initialises a program's weights in place."""
