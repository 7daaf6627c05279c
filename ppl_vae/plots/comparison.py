"""Pictures of a comparison: ArviZ's ``plot_compare`` of held-out elpd, rate–distortion, k̂, reconstructions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .figures import image_grid, new_figure, save_figure

__all__ = ["elpd_compare", "rate_distortion_points", "khat_boxes", "reconstructions_side_by_side"]


def elpd_compare(table, path: str | Path) -> Path:
    """``arviz.plot_compare`` of an ``arviz.compare`` table of held-out elpds (sums over test points).

    Open circles: each variant's elpd ± SE; grey triangles: the same elpd ± the paired SE of its
    difference to the best (``dse``); the dashed line marks the best. ``plot_compare`` sorts the
    table it is given in place, so it draws a copy.
    """
    import arviz as az

    fig, ax = new_figure((6, 0.6 * len(table) + 1.5))
    az.plot_compare(table.copy(), plot_ic_diff=True, ax=ax, legend=True, title=False)
    ax.set_xlabel("held-out elpd: Σ over test points of IWAE log p(x_i) [nats]")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def rate_distortion_points(rows: list[dict], path: str | Path) -> Path:
    fig, ax = new_figure((5.5, 4))
    for r in rows:
        ax.scatter(r["kl"], r["distortion"])
        ax.annotate(r["variant"], (r["kl"], r["distortion"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("rate: KL [nats]")
    ax.set_ylabel("distortion: −E_q log p(x|z) [nats]")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def khat_boxes(khats: dict[str, np.ndarray], path: str | Path) -> Path:
    fig, ax = new_figure((6, 0.5 * len(khats) + 1.5))
    # k̂ is infinite where too few draws reach the tail; draw those at the right edge
    values = [np.nan_to_num(np.asarray(k, dtype=float), posinf=2.0, neginf=-1.0) for k in khats.values()]
    ax.boxplot(values, orientation="horizontal", tick_labels=list(khats))
    for level, style in ((0.5, ":"), (0.7, "--")):
        ax.axvline(level, color="gray", ls=style, lw=1)
    ax.set_xlabel("PSIS k̂ per test point")
    return save_figure(fig, path)


def reconstructions_side_by_side(
    x: torch.Tensor, decodings: dict[str, torch.Tensor], image_shape, path: str | Path
) -> Path:
    rows = [x] + [d.cpu() for d in decodings.values()]
    labels = ["x"] + list(decodings)
    return save_figure(image_grid(rows, image_shape, labels, title="the same test images, one z ~ q(z|x) each"), path)
