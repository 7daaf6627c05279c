"""Pictures of a comparison: log p(x) with paired error bars, rate–distortion, k̂, reconstructions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .figures import image_grid, new_figure, save_figure

__all__ = ["log_px_paired", "rate_distortion_points", "khat_boxes", "reconstructions_side_by_side"]


def log_px_paired(rows: list[dict], path: str | Path) -> Path:
    fig, ax = new_figure((6, 0.5 * len(rows) + 1.5))
    y = np.arange(len(rows))[::-1]
    best = rows[0]["log_px"]
    ax.errorbar(
        [best - r["diff_to_best"] for r in rows],
        y,
        xerr=[2 * r["diff_se"] for r in rows],
        fmt="o",
        capsize=4,
        label="paired ±2 SE vs best",
    )
    ax.errorbar(
        [r["log_px"] for r in rows],
        y + 0.15,
        xerr=[2 * r["log_px_se"] for r in rows],
        fmt=".",
        color="gray",
        alpha=0.6,
        capsize=2,
        label="unpaired ±2 SE",
    )
    ax.set_yticks(y, [r["variant"] for r in rows])
    ax.set_xlabel("held-out log p(x) [nats per datapoint]")
    ax.legend(fontsize=8)
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
