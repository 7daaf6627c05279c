"""Pictures: training curves, image grids (reconstructions, samples), diagnostics.

Every function returns its :class:`matplotlib.figure.Figure` (a notebook shows it as it is) and,
given a ``path``, also writes it there as one PNG, atomically. Figures are made with matplotlib's
object-oriented API, never through pyplot, so drawing chooses no backend and leaves a notebook's
inline plotting alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..storage.atomic import atomic_path

__all__ = ["new_figure", "save_figure", "mosaic", "image_grid", "plot_history", "plot_images", "plot_reconstructions"]


def new_figure(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, **subplots):
    """``(figure, axes)`` of a new figure that belongs to no pyplot state."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **subplots)


def save_figure(fig, path: str | Path | None):
    """Write ``fig`` as a PNG at ``path``, atomically (nothing when ``path`` is None); return ``fig``."""
    if path is not None:
        with atomic_path(Path(path)) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return fig


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


def mosaic(rows: list[np.ndarray], gap: int = 1) -> np.ndarray:
    """The rows of images (each ``(n, H, W)`` or ``(n, H, W, C)``) tiled into one array, ``gap`` pixels of
    white between them and where a row is shorter than the longest."""
    n_cols = max(len(r) for r in rows)
    h, w, *channels = rows[0].shape[1:]
    out = np.ones((len(rows) * (h + gap) - gap, n_cols * (w + gap) - gap, *channels), dtype=np.float32)
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = image
    return out


def image_grid(
    rows: list[torch.Tensor], image_shape: Sequence[int], row_labels: list[str] | None = None, title: str | None = None
):
    """A figure with one row of images per tensor in ``rows`` (each ``(n, D)``): one picture of them all,
    drawn as one image (an axes per image costs a second for a hundred of them), rows labelled on the left."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    h, w = display_shape(image_shape)[-2:]
    scale = 0.9 * min(1.0, 14.0 / max(n_cols, 1))
    figsize = (n_cols * scale * w / h + 0.8, n_rows * scale + (0.4 if title else 0))
    fig, ax = new_figure(figsize)
    gap = max(1, round(0.05 * h))
    ax.imshow(mosaic([_as_images(row, image_shape) for row in rows], gap), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([r * (h + gap) + (h - 1) / 2 for r in range(n_rows)] if row_labels else [])
    if row_labels:
        ax.set_yticklabels(row_labels, fontsize=8)
        ax.tick_params(axis="y", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_images(
    x: torch.Tensor, image_shape: Sequence[int], path: str | Path | None = None, ncol: int = 8, title: str | None = None
):
    """A grid of ``(N, D)`` images, ``ncol`` a row."""
    rows = list(x.split(ncol))
    return save_figure(image_grid(rows, image_shape, title=title), path)


def plot_reconstructions(
    x: torch.Tensor,
    decodings: torch.Tensor,
    image_shape: Sequence[int],
    path: str | Path | None = None,
    title: str | None = None,
):
    """Each column one datapoint: x on top, below it the decodings of K draws z ~ q(z|x).

    Args:
        x: ``(B, D)``; decodings: ``(K, B, D)``.
    """
    rows = [x] + list(decodings)
    labels = ["x"] + [f"z{k + 1}~q" for k in range(len(decodings))]
    return save_figure(image_grid(rows, image_shape, labels, title), path)


def plot_history(history: list[dict], path: str | Path | None = None):
    """The test ELBO (β = 1) and the training objective per datapoint against epoch.

    They are different quantities: the training objective is what the optimizer saw (β-weighted
    with annealing, or the IWAE bound), so it is drawn dashed and named for what it is. The
    y-axis spans the epochs after the first tenth: the first epochs' numbers, hundreds of nats
    lower, would flatten the rest (they are off the scale, marked by the axis' lower edge).
    """
    fig, ax = new_figure((6, 3.6))
    epochs = [row["epoch"] for row in history]
    curves = {
        "test ELBO (β = 1)": ([row["test_elbo"] for row in history], {"marker": "o", "ms": 3}),
        "training objective (as optimized)": ([row["train_objective"] for row in history], {"ls": "--"}),
    }
    if any("val_elbo" in row for row in history):
        curves["validation ELBO (β = 1)"] = ([row.get("val_elbo", math.nan) for row in history], {"lw": 1})
    for label, (values, style) in curves.items():
        ax.plot(epochs, values, label=label, **style)
    late = [v for values, _ in curves.values() for v in values[max(1, len(values) // 10) :] if math.isfinite(v)]
    if len(history) > 5 and late:
        low, high = min(late), max(late)
        pad = 0.1 * (high - low) or 1.0
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    ax.set_title("ELBO per datapoint during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)
