"""Diagnostic pictures of the workflow: k̂ per point, predictive checks, SBC ranks."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from scipy import stats

from .figures import new_figure, save_figure

__all__ = ["khat_per_point", "ppc_image_statistics", "sbc_rank_ecdf", "image_statistics", "data_variable"]


def khat_per_point(khat: np.ndarray, path: str | Path | None = None):
    """k̂ per test point with the 0.5 and 0.7 thresholds of Yao et al. (2018)."""
    fig, ax = new_figure((6, 3.2))
    colors = np.where(khat > 0.7, "tab:red", np.where(khat > 0.5, "tab:orange", "tab:blue"))
    ax.scatter(np.arange(len(khat)), khat, s=6, c=colors)
    for level, style in ((0.5, ":"), (0.7, "--")):
        ax.axhline(level, color="gray", ls=style, lw=1)
    ax.set_xlabel("test point")
    ax.set_ylabel("PSIS k̂")
    ax.set_title(f"mean k̂ {khat.mean():.2f}; {np.mean(khat > 0.7):.0%} above 0.7")
    return save_figure(fig, path)


def image_statistics(x: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of images ``(..., D)``: mean intensity, fraction of ink, pooled pixel values."""
    return {
        "mean_intensity": x.mean(-1),
        "ink_fraction": (x > 0.5).mean(-1),
        "pixel_values": x.reshape(x.shape[:-2] + (-1,)),
    }


def data_variable(idata) -> str:
    """The observed variable holding the images (the data site's, as the export's attributes name it)."""
    from ..diagnostics.inference_data import data_variable as named

    name = named(idata)
    if name is None:
        raise ValueError("the InferenceData has no data variable (no observed site holds x)")
    return name


def ppc_image_statistics(idata, path: str | Path | None = None):
    """ArviZ's posterior predictive check (``arviz.plot_ppc``) on image statistics of an ``InferenceData``."""
    import arviz as az

    name = data_variable(idata)
    observed = image_statistics(idata.observed_data[name].values)  # (N,)
    replicated = image_statistics(idata.posterior_predictive[name].values)  # (1, S, N)
    check = az.from_dict(posterior_predictive=dict(replicated), observed_data=observed)
    fig, axes = new_figure((11, 3.2), 1, len(observed))
    draws = min(20, replicated["mean_intensity"].shape[1])
    for ax, stat in zip(np.atleast_1d(axes), observed):
        # a statistic without spread (no ink at all, say) has no density: its ECDF is drawn instead
        rep = replicated[stat]
        spread = np.ptp(observed[stat]) > 0 and np.ptp(rep.reshape(-1, rep.shape[-1]), axis=-1).min() > 0  # each draw
        kind = "kde" if spread else "cumulative"
        with warnings.catch_warnings():  # arviz's ECDF passes matplotlib an argument form it deprecates
            warnings.filterwarnings("ignore", "Passing a dict or None as alias_mapping", DeprecationWarning)
            az.plot_ppc(check, var_names=[stat], kind=kind, num_pp_samples=draws, random_seed=0, ax=ax)
        ax.set_title(stat.replace("_", " "), fontsize=9)
    # one legend for the row, below the panels: inside them it covered the curves
    axes = np.atleast_1d(axes)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.28, wspace=0.3)
    return save_figure(fig, path)


def sbc_rank_ecdf(result, path: str | Path | None = None, names: list[str] | None = None):
    """ECDF of normalised ranks minus the uniform CDF, per latent coordinate, with a 95% band."""
    ranks = result.ranks / (result.num_draws + 1)  # (M, Z) in [0, 1)
    m = ranks.shape[0]
    grid = np.linspace(0, 1, 101)
    lower = stats.binom.ppf(0.025, m, grid) / m - grid
    upper = stats.binom.ppf(0.975, m, grid) / m - grid
    fig, ax = new_figure((6, 3.5))
    ax.fill_between(grid, lower, upper, color="gray", alpha=0.25, label="95% band (uniform ranks)")
    names = names or [f"z[{j}]" for j in range(ranks.shape[1])]
    for j in range(ranks.shape[1]):
        ecdf = (ranks[:, j][None, :] <= grid[:, None]).mean(1)
        ax.plot(grid, ecdf - grid, lw=1, label=f"{names[j]} (p = {result.pvalues[j]:.2g})")
    ax.set_xlabel("normalised rank of z among q(z|x) draws")
    ax.set_ylabel("ECDF − uniform")
    ax.set_title(f"SBC: {m} simulations, p = {result.pvalue:.2g} (Bonferroni over coordinates)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, ncol=1 + ranks.shape[1] // 16, frameon=False)
    return save_figure(fig, path)
