"""Pictures of the σ sweep: the rate–distortion curve and identity preservation against σ."""

from __future__ import annotations

from pathlib import Path

from .figures import new_figure, save_figure

__all__ = ["rate_mse_curve", "identity_against_sigma"]


def rate_mse_curve(rows: list[dict], path: str | Path) -> Path:
    fig, ax = new_figure((5.5, 4))
    rate, mse = [r["rate"] for r in rows], [r["mse"] for r in rows]
    ax.plot(rate, mse, "o-")
    for r in rows:
        ax.annotate(f"σ={r['sigma']:g}", (r["rate"], r["mse"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("rate: KL(q(z|x) ‖ p(z)) [nats]")
    ax.set_ylabel("distortion: pixel MSE of decodings")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def identity_against_sigma(rows: list[dict], path: str | Path) -> Path:
    fig, ax = new_figure((5.5, 4))
    sigmas = [r["sigma"] for r in rows]
    for key, label in [
        ("posterior_sample", "z ~ q(z|x)"),
        ("posterior_mean", "z = E_q[z]"),
        ("prior_sample", "z ~ p(z) (chance)"),
        ("real_images", "real test images"),
    ]:
        mean = [r[f"identity_{key}"] for r in rows]
        low = [r[f"identity_{key}"] - r[f"identity_{key}_low"] for r in rows]
        high = [r[f"identity_{key}_high"] - r[f"identity_{key}"] for r in rows]
        ax.errorbar(sigmas, mean, yerr=[low, high], marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks(sigmas, [f"{s:g}" for s in sigmas])
    ax.minorticks_off()
    ax.set_xlabel("σ (fixed likelihood scale)")
    ax.set_ylabel("P(decoding classified as the label of x)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
