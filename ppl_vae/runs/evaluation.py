"""The Bayesian-workflow analysis of a trained run: ``ppl-vae evaluate``.

Everything goes through the program's traces, so a user's own program gets the same
analysis: importance-sampled log p(x) with PSIS k̂, rate/distortion/MSE, active units, the
amortization and approximation gaps, simulation-based calibration, predictive checks, and
an ArviZ ``InferenceData`` written to ``inference_data.nc``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch

from ..data.rowfile import as_tensor
from ..diagnostics.estimators import importance_sample, psis_khat, summarize
from ..diagnostics.gaps import refine_local_guide
from ..diagnostics.inference_data import to_inference_data
from ..diagnostics.sbc import simulation_based_calibration
from ..errors import UserError
from ..inference.predictive import prior_predictive
from ..plots import diagnostics as wp
from ..plots.figures import plot_images, plot_reconstructions
from ..storage.atomic import atomic_path, write_json
from .report import write_report

__all__ = ["WorkflowConfig", "evaluate_run", "inference_gaps"]


@dataclass
class WorkflowConfig:
    k: int = 1000  # importance samples per test point
    points: int = 0  # test points to evaluate (0 = all)
    gap_points: int = 100  # test points whose guides are refined for the gaps
    gap_steps: int = 300  # optimisation steps of the local guides
    sbc_simulations: int = 500  # simulated (z, x) pairs
    sbc_draws: int = 99  # guide draws ranked against each
    idata_points: int = 200  # test points stored in inference_data.nc
    idata_draws: int = 20  # draws per point stored there
    seed: int = 0

    def validate(self) -> WorkflowConfig:
        for name in ("k", "gap_points", "gap_steps", "sbc_simulations", "sbc_draws", "idata_points", "idata_draws"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.points < 0:
            raise UserError(f"points must be >= 0, got {self.points}")
        return self


def inference_gaps(model, guide, x: torch.Tensor, amortized, k: int, steps: int, progress: bool = False) -> dict:
    """Cremer et al.'s split of log p(x) - ELBO on the rows of ``x`` (see :mod:`ppl_vae.diagnostics.gaps`).

    ``amortized`` are the amortized guide's estimates for the same rows. log p(x) is the
    tighter of the two IWAE-K lower bounds (amortized and refined proposal), point by point.
    """
    local = refine_local_guide(model, guide, x, steps=steps, progress=progress)
    refined = importance_sample(model, local.guide, x, k, split_points=False)
    log_px = torch.maximum(amortized.log_px, refined.log_px)
    return {
        "approximation_gap": float((log_px - refined.elbo).mean()),
        "amortization_gap": float((refined.elbo - amortized.elbo).mean()),
        "gap_points": int(len(x)),
    }


def evaluate_run(
    run, config: WorkflowConfig | None = None, x: torch.Tensor | None = None, progress: bool = True
) -> dict:
    """Run the whole analysis on the run's test split (or ``x``) and write it into the run directory."""
    config = (config or WorkflowConfig()).validate()
    x = as_tensor(run.dataset().test if x is None else x).to(run.device)
    if config.points:
        x = x[: config.points]
    model, guide = run.program.model, run.program.guide
    out, figures = Path(run.path), Path(run.path) / "figures"
    pyro.set_rng_seed(config.seed)
    start = time.perf_counter()

    est = importance_sample(model, guide, x, config.k, progress=progress)
    khat = psis_khat(est.log_w)
    result = summarize(est, khat)

    n_gap = min(config.gap_points, len(x))
    result.update(inference_gaps(model, guide, x[:n_gap], _subset(est, n_gap), config.k, config.gap_steps, progress))

    sbc = simulation_based_calibration(
        model, guide, run.data_dim, config.sbc_simulations, config.sbc_draws, device=run.device
    )
    result["sbc_pvalue"] = sbc.pvalue
    result["sbc_pvalues"] = [float(p) for p in sbc.pvalues]
    result["seconds"] = time.perf_counter() - start

    n_id = min(config.idata_points, len(x))
    idata = to_inference_data(model, guide, x[:n_id], draws=config.idata_draws)
    with atomic_path(out / "inference_data.nc") as tmp:
        idata.to_netcdf(str(tmp), engine="h5netcdf")

    shape = run.image_shape
    wp.plot_khat(khat, figures / "khat.png")
    worst = np.argsort(-khat)[:8]
    plot_images(
        x[torch.as_tensor(worst.copy())].cpu(),
        shape,
        figures / "khat_worst.png",
        title="largest k̂: " + ", ".join(f"{khat[i]:.2f}" for i in worst),
    )
    _, prior_x = prior_predictive(model, 16, run.data_dim, run.device)
    plot_images(prior_x.cpu(), shape, figures / "prior_predictive.png", title="x ~ p(x|z), z ~ p(z)")
    x_rep = idata.posterior_predictive["x"].values[0, :4, :8]  # (4 draws, 8 points, D)
    plot_reconstructions(
        x[:8].cpu(),
        torch.from_numpy(x_rep),
        shape,
        figures / "posterior_predictive.png",
        title="x' ~ p(x|z), z ~ q(z|x)",
    )
    wp.plot_ppc(idata, figures / "ppc.png")
    wp.plot_sbc(sbc, figures / "sbc.png")

    with atomic_path(out / "pointwise.npz") as tmp:
        with open(tmp, "wb") as f:  # per-point numbers for paired comparisons; plain arrays, no pickle
            np.savez(f, log_px=est.log_px.numpy(), elbo=est.elbo.numpy(), kl=est.kl.numpy(), khat=khat)
    write_json(out / "evaluation.json", result)
    write_report(out)
    return result


def _subset(est, n: int):
    from dataclasses import fields, replace

    return replace(est, **{f.name: getattr(est, f.name)[:n] for f in fields(est)})
