"""Pictures: training curves, image grids (reconstructions, samples), diagnostics.

Every function writes one PNG atomically and returns its path. Figures are made with
matplotlib's object-oriented API (:class:`matplotlib.figure.Figure`), never through pyplot, so
drawing chooses no backend and leaves a notebook's inline plotting alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..storage.atomic import atomic_path

__all__ = ["new_figure", "save_figure", "image_grid", "plot_history", "plot_images", "plot_reconstructions"]


def new_figure(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, **subplots):
    """``(figure, axes)`` of a new figure that belongs to no pyplot state."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **subplots)


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path``, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def display_shape(image_shape: Sequence[int]) -> tuple[int, ...]:
    """Flat vectors are shown as squares where D is a square number, else as one strip."""
    if len(image_shape) >= 2:
        return tuple(image_shape)
    d = int(np.prod(image_shape))
    side = math.isqrt(d)
    return (side, side) if side * side == d else (1, d)


def _as_images(x: torch.Tensor, image_shape: Sequence[int]) -> np.ndarray:
    """``(N, D)`` -> ``(N, H, W)`` or ``(N, H, W, C)`` in [0, 1] for display."""
    x = x.detach().cpu().float().clamp(0, 1).reshape((-1,) + display_shape(image_shape)).numpy()
    if x.ndim == 4:  # (N, C, H, W)
        x = x.transpose(0, 2, 3, 1)
        if x.shape[-1] == 1:
            x = x[..., 0]
    return x


def image_grid(
    rows: list[torch.Tensor], image_shape: Sequence[int], row_labels: list[str] | None = None, title: str | None = None
):
    """A figure with one row of images per tensor in ``rows`` (each ``(n, D)``)."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    h, w = display_shape(image_shape)[-2:]
    scale = 0.9 * min(1.0, 14.0 / max(n_cols, 1))
    figsize = (n_cols * scale * w / h + 0.8, n_rows * scale + (0.4 if title else 0))
    fig, axes = new_figure(figsize, n_rows, n_cols, squeeze=False)
    for r, row in enumerate(rows):
        images = _as_images(row, image_shape)
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                ax.imshow(images[c], cmap="gray", vmin=0, vmax=1)
        if row_labels:
            axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def plot_images(
    x: torch.Tensor, image_shape: Sequence[int], path: str | Path, ncol: int = 8, title: str | None = None
) -> Path:
    """A grid of ``(N, D)`` images, ``ncol`` a row."""
    rows = list(x.split(ncol))
    return save_figure(image_grid(rows, image_shape, title=title), path)


def plot_reconstructions(
    x: torch.Tensor, decodings: torch.Tensor, image_shape: Sequence[int], path: str | Path, title: str | None = None
) -> Path:
    """Each column one datapoint: x on top, below it the decodings of K draws z ~ q(z|x).

    Args:
        x: ``(B, D)``; decodings: ``(K, B, D)``.
    """
    rows = [x] + list(decodings)
    labels = ["x"] + [f"z{k + 1}~q" for k in range(len(decodings))]
    return save_figure(image_grid(rows, image_shape, labels, title), path)


def plot_history(history: list[dict], path: str | Path) -> Path:
    """The test ELBO (β = 1) and the training objective per datapoint against epoch.

    They are different quantities: the training objective is what the optimizer saw (β-weighted
    with annealing, or the IWAE bound), so it is drawn dashed and named for what it is.
    """
    fig, ax = new_figure((5.5, 3.5))
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row["test_elbo"] for row in history], marker="o", ms=3, label="test ELBO (β = 1)")
    ax.plot(epochs, [row["train_objective"] for row in history], ls="--", label="training objective (as optimized)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
