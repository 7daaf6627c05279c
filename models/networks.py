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

__all__ = ["MLP", "ConvDecoder", "ConvEncoder", "NETWORKS"]


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
    "conv": (
        lambda data_dim, image_shape, hidden_dim, layers: ConvEncoder(image_shape, hidden_dim),
        lambda latent_dim, data_dim, image_shape, hidden_dim, layers, ppp: ConvDecoder(latent_dim, image_shape, ppp),
    ),
}
"""Network name -> (encoder constructor, decoder constructor)."""
